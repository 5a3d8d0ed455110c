"""The benchmark harness: its peers answer like the service, and a short run writes a full report."""

import io
import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest

from benchmarks.live import ROOT
from benchmarks.load import Peer, Server, python_command, wrk
from benchmarks.report import markdown, targets
from benchmarks.scenarios import NPY, scenarios

pytestmark = pytest.mark.slow


def post(url: str, body: bytes, content_type: str, accept: str = "application/json") -> bytes:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type, "Accept": accept})
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.status == 200
        return response.read()


def test_scenarios_send_the_same_array_as_npy_and_json():
    for scenario in (s for s in scenarios(32) if s.binary):
        npy_body, npy_type, accept, path = scenario.request(npy_ok=True)
        json_body, json_type, _, json_path = scenario.request(npy_ok=False)
        assert (npy_type, accept, json_type, json_path) == (NPY, NPY, "application/json", scenario.path)
        array = np.load(io.BytesIO(npy_body))
        assert array.shape[0] == scenario.rows
        np.testing.assert_array_equal(array, np.asarray(json.loads(json_body)[scenario.array_field], dtype=np.float32))
        if scenario.samples:
            assert f"samples={scenario.samples}" in path


@pytest.mark.parametrize(
    "module, arguments, npy, ready_path, only",
    [
        ("benchmarks.peers.naive", [], True, "/health/ready", ()),
        ("benchmarks.peers.lit", [], False, "/health/ready", ()),
        ("benchmarks.peers.mosec_peer", ["2", "1"], False, "/", ("sample n=1", "sample n=64")),
        ("benchmarks.peers.floor", ["2"], False, "/health/ready", ("sample n=1",)),
    ],
)
def test_peers_serve_the_scenarios_with_the_right_shapes(tmp_path, module, arguments, npy, ready_path, only):
    peer = Peer(module, python_command(module) + ["{port}", *arguments], npy=npy, ready_path=ready_path, only=only)
    with Server(peer, tmp_path) as server:
        for scenario in (s for s in scenarios(32) if peer.serves(s)):
            body, content_type, accept, path = scenario.request(npy)
            answer = post(server.url + path, body, content_type, accept)
            if content_type == NPY:
                first = np.load(io.BytesIO(answer))
            else:
                payload = json.loads(answer)
                first = np.asarray(payload.get("images", payload.get("mean", payload.get("log_likelihood"))))
            assert len(first) == scenario.rows and np.isfinite(first).all()


def test_wrk_counts_requests_errors_and_latency(tmp_path):
    with Server(Peer("hello", python_command("benchmarks.peers.hello") + ["{port}"]), tmp_path) as server:
        good = wrk(server.url + "/sample", b'{"n": 1}', "application/json", "", connections=2, duration_s=1)
        missing = wrk(server.url + "/no-such-path", b"{}", "application/json", "", connections=1, duration_s=1)
    assert good["requests"] > 100 and good["errors"] == 0 and 0 < good["p50_us"] <= good["p99_us"]
    assert missing["requests"] > 0 and missing["non_2xx"] == missing["requests"]  # 404s are counted as errors


def test_a_short_run_writes_the_tables_targets_and_plot(tmp_path):
    command = [
        sys.executable,
        "-m",
        "benchmarks",
        "--duration",
        "1",
        "--concurrency",
        "1",
        "8",
        "--peers",
        "vae-serve",
        "naive FastAPI",
        "hello (FastAPI floor)",
        "--scenarios",
        "sample n=1",
        "decode",
        "--cold-starts",
        "1",
        "--soak-requests",
        "300",
        "--soak-stretch",
        "1",
        "--overload-duration",
        "0",
        "--burst-clients",
        "0",
        "--grpc-duration",
        "1",
        "--out",
        str(tmp_path),
    ]
    subprocess.run(command, cwd=ROOT, check=True, timeout=600, capture_output=True)
    results = json.loads((tmp_path / "results.json").read_text())
    seen = {(r["peer"], r["scenario"], r["connections"]) for r in results["runs"]}
    assert ("vae-serve", "decode 256", 8) in seen and ("naive FastAPI", "sample n=1", 1) in seen
    assert ("hello (FastAPI floor)", "decode 256", 1) not in seen  # the floor serves /sample only
    ours = [r for r in results["runs"] if r["peer"] == "vae-serve"]
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in ours)
    assert results["soak"]["points"][-1]["requests"] >= 300 and results["cold_start_s"][0] > 0
    assert len(results["soak"]["points"][-1]["worker_rss_mb"]) >= 1  # each worker's memory, apart
    loads = {(g["transport"], g["rows"]) for g in results["grpc"]}
    assert loads == {("grpc", 1), ("grpc", 256), ("http", 1), ("grpc floor", 1)}  # h2load drives every one
    assert {g["connections"] for g in results["grpc"]} == {1, 8}
    assert all(g["requests"] > 0 and g["errors"] == 0 for g in results["grpc"])
    report = (tmp_path / "results.md").read_text()
    assert "## Targets" in report and "÷ naive" in report and "| vae-serve | npy | 8 |" in report
    assert (tmp_path / "throughput.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_targets_are_judged_from_the_measured_ratios():
    run = lambda peer, scenario, c, rps, p50=10e3, p99=20e3, rows=1: {  # noqa: E731
        "peer": peer,
        "scenario": scenario,
        "connections": c,
        "rps": rps,
        "rows_per_s": rps * rows,
        "p50_us": p50,
        "p99_us": p99,
        "errors": 0,
        "format": "json",
    }
    results = {
        "machine": {"date": "d", "cpu": "c", "cores": 2, "memory_gib": 1, "python": "3", "onnxruntime": "1"},
        "model": "m",
        "duration_s": 1,
        "concurrency": [64],
        "inprocess": {"decode 256": 1000.0},
        "runs": [
            run("vae-serve", "sample n=1", 64, 3000),
            run("vae-serve, 1 worker", "sample n=1", 64, 2000),
            run("naive FastAPI", "sample n=1", 64, 1000),
            run("mosec, 1 worker (default)", "sample n=1", 64, 1500),
            run("mosec, 2 workers, 1 ms wait", "sample n=1", 64, 2500),
            run("vae-serve", "oip decoder n=1", 64, 2000),
            run("MLServer (OIP)", "oip decoder n=1", 64, 500),
            run("vae-serve", "decode 256", 64, 1, p99=40e3, rows=256),
            run("vae-serve, 1 worker", "decode 256", 64, 1.1, rows=256),
        ],
        "cold_start_s": [0.5, 3.0, 0.7],
    }
    judged = {name: (value.split(" (")[0], ok) for name, value, ok in targets(results)}
    assert judged["/sample n=1 JSON at c=64 ≥ 1.5× mosec's best"] == ("1.20×", False)  # the best: 2 workers
    assert judged["/sample n=1 JSON at c=64 ≥ 3× the lean naive app"] == ("3.00×", True)
    assert judged["OIP infer on the decoder (n=1, JSON) at c=64 ≥ 3× MLServer"] == ("4.00×", True)
    assert judged["/sample n=1 at c=64: default workers ≥ 1.6× one worker"] == ("1.50×", False)
    assert judged["decode 256 at c=64: default workers no slower than one (≥ 0.95×, the noise)"] == ("0.91×", False)
    assert judged["p99 ≤ 3× p50 at c=64: decode 256"][1] is False  # 40 ms vs 10 ms
    assert judged["/decode 256 NPY ≥ 0.3× in-process onnxruntime rows/s"][1] is False  # 256 of 1000 rows/s
    assert judged["cold start (spawn → ready) ≤ 2 s on CPU"] == ("0.70 s median of 3", True)
    report = markdown(results)
    # sample n=1 at c=64: ÷ 1 worker, no batching, naive, mosec's best, MLServer, LitServe, in-process
    assert "| 64 | 1.50× | n/a | 3.00× | 1.20× | n/a | n/a | n/a |" in report
    assert "| **no** |" in report and "| yes |" in report


def test_open_loop_keeps_its_arrival_rate_and_counts_every_outcome(tmp_path):
    from benchmarks.overload import open_loop

    with Server(Peer("hello", python_command("benchmarks.peers.hello") + ["{port}"]), tmp_path) as server:
        run = open_loop(
            server.url + "/sample", b'{"n": 1}', {"content-type": "application/json"}, rate=100, duration_s=1
        )
        missing = open_loop(server.url + "/nowhere", b"{}", {}, rate=20, duration_s=0.5)
    assert run["requests"] == 100 and run["outcomes"] == {"200": 100} and run["errors_other_than_503"] == 0
    assert 0.9 <= run["elapsed_s"] < 3  # arrivals spread over the second, not sent at once
    assert 0 < run["p50_ok_ms"] <= run["p99_ok_ms"]
    assert missing["outcomes"] == {"404": 10} and missing["errors_other_than_503"] == 10


def test_a_burst_sends_every_request_at_once_and_reports_retry_after(tmp_path):
    from benchmarks.overload import burst

    with Server(Peer("hello", python_command("benchmarks.peers.hello") + ["{port}"]), tmp_path) as server:
        result = burst(server.url + "/sample", b'{"n": 1}', {"content-type": "application/json"}, clients=40)
    assert result["clients"] == result["requests"] == 40 and result["outcomes"] == {"200": 40}
    assert result["elapsed_s"] < 3 and result["max_ok_ms"] >= result["p99_ok_ms"] and result["p99_503_ms"] is None
