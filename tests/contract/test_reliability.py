"""Overload, deadlines, disconnects, SIGTERM drain, auth, CORS, request ids, broken models, a soak.

Each test starts its own server with the settings it needs (127.0.0.1, bounded counts and time).
The score graph gets ``max_concurrent_runs=1``, so one heavy /elbo holds its only run slot
while other requests queue behind it.
"""

import asyncio
import json
import math
import os
import shutil
import signal
import time
from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.live import vae_serve
from benchmarks.overload import burst

from .conftest import ROOT, start_server

HEAVY = {
    "inputs": (np.eye(40, 784) > 0).astype(float).tolist(),
    "samples": 500,
    "seed": 0,
}  # 20,000 decoder rows: ~1.5 s


def images(n, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(float).tolist()


def metric(url: str, line_start: str) -> float:
    """The value of the first /metrics sample whose line starts with ``line_start`` (0 if none yet)."""
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def score_metric(url, name, **labels) -> float:
    label_text = ",".join(f'{k}="{v}"' for k, v in {"graph": "score", "model": "fashion-mnist", **labels}.items())
    return metric(url, f"{name}{{{label_text}}}")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory):
    server, url = start_server(
        ROOT / "models",
        tmp_path_factory.mktemp("busy") / "server.log",
        max_concurrent_runs=1,
        max_queue_rows=40000,
        max_sample_rows=40000,
        workers=1,  # admission is per worker process: the blocker and the late requests share one queue
    )
    yield url
    server.stop()


async def behind_a_heavy_request(url: str, make_requests):
    """Start HEAVY, let it take the score graph's run slot, then send ``make_requests(client)``."""
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        blocker = asyncio.create_task(client.post("/elbo", json=HEAVY))
        await asyncio.sleep(0.3)
        assert not blocker.done()
        results = await asyncio.gather(*make_requests(client), return_exceptions=True)
        return await blocker, results


@pytest.mark.slow
def test_requests_that_cannot_meet_their_deadline_get_503_at_once_and_never_reach_ort(busy_server):
    rows_before = score_metric(busy_server, "vae_batch_rows_sum")
    shed_before = score_metric(busy_server, "vae_shed_requests_total", reason="late")
    blocker, late = asyncio.run(
        behind_a_heavy_request(
            busy_server,
            lambda c: [
                c.post("/elbo", json={"inputs": images(1), "samples": 8}, headers={"X-Timeout-Ms": "150"})
                for _ in range(5)
            ],
        )
    )
    assert blocker.status_code == 200
    assert [r.status_code for r in late] == [503] * 5
    assert all("after its deadline" in r.json()["detail"] and "X-Timeout-Ms" in r.json()["detail"] for r in late)
    assert all(int(r.headers["retry-after"]) >= 1 for r in late)
    assert all(r.elapsed.total_seconds() < 1.0 for r in late)  # told at once, long before the blocker is done
    assert score_metric(busy_server, "vae_shed_requests_total", reason="late") == shed_before + 5
    assert score_metric(busy_server, "vae_batch_rows_sum") == rows_before + 40  # only the blocker's 40 images ran


def test_oip_parameters_timeout_sheds_a_request_that_cannot_meet_it(busy_server):
    body = {
        "parameters": {"timeout": 150_000},
        "inputs": [
            {"name": "x", "shape": [1, 784], "datatype": "FP32", "data": images(1)[0]},
            {"name": "eps", "shape": [4, 1, 32], "datatype": "FP32", "data": [0.0] * 128},
        ],
    }
    blocker, (late,) = asyncio.run(
        behind_a_heavy_request(
            busy_server, lambda c: [c.post("/v2/models/fashion-mnist-score/infer", content=json.dumps(body))]
        )
    )
    assert blocker.status_code == 200 and late.status_code == 503 and int(late.headers["retry-after"]) >= 1
    assert "parameters.timeout" in late.json()["error"] and "after its deadline" in late.json()["error"]


@pytest.mark.slow
def test_clients_that_disconnect_have_their_queued_work_cancelled(busy_server):
    dropped_before = score_metric(busy_server, "vae_dropped_requests_total", reason="cancelled")
    rows_before = score_metric(busy_server, "vae_batch_rows_sum")

    async def impatient(client):  # gives up after 200 ms: httpx closes the connection
        return await client.post("/elbo", json={"inputs": images(2), "samples": 8}, timeout=0.2)

    blocker, gone = asyncio.run(behind_a_heavy_request(busy_server, lambda c: [impatient(c) for _ in range(4)]))
    assert blocker.status_code == 200
    assert all(isinstance(r, httpx.TimeoutException) for r in gone)
    deadline = time.monotonic() + 5
    while (
        score_metric(busy_server, "vae_dropped_requests_total", reason="cancelled") < dropped_before + 4
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert score_metric(busy_server, "vae_dropped_requests_total", reason="cancelled") == dropped_before + 4
    assert score_metric(busy_server, "vae_batch_rows_sum") == rows_before + 40  # none of the 8 abandoned images ran


@pytest.mark.slow
def test_a_burst_far_over_capacity_gets_only_200s_and_503s(tmp_path):
    server, url = start_server(
        ROOT / "models", tmp_path / "server.log", max_concurrent_runs=1, max_queue_rows=2048, max_sample_rows=2048
    )
    try:
        x = images(2, seed=9)
        reference = httpx.post(f"{url}/elbo", json={"inputs": x, "samples": 64, "seed": 5}, timeout=60).json()[
            "log_likelihood"
        ]

        async def burst():
            limits = httpx.Limits(max_connections=400)
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
                return await asyncio.gather(
                    *(client.post("/elbo", json={"inputs": x, "samples": 64, "seed": 5}) for _ in range(400))
                )

        responses = asyncio.run(burst())  # 400 × 128 decoder rows against a 2048-row queue
        codes = [r.status_code for r in responses]
        assert set(codes) <= {200, 503} and codes.count(503) > 100 and codes.count(200) >= 16
        assert all(int(r.headers["retry-after"]) >= 1 for r in responses if r.status_code == 503)
        for r in responses:
            if r.status_code == 200:  # every answer is the right one (to float32 rounding across batch sizes)
                np.testing.assert_allclose(r.json()["log_likelihood"], reference, rtol=1e-5)
        assert httpx.get(f"{url}/health/live").status_code == 200 and server.process.poll() is None
    finally:
        server.stop()


@pytest.mark.slow
def test_admission_is_all_or_nothing_so_refused_requests_cost_no_compute(tmp_path):
    """200 concurrent /elbo of 8 images × K=64 against a 2048-row queue: each request is 4 chunks of
    the score graph; a refused one leaves none of them behind, so the graph runs exactly the rows of
    the answered requests."""
    settings = {"max_concurrent_runs": 1, "max_queue_rows": 2048, "max_sample_rows": 2048}
    server, url = start_server(ROOT / "models", tmp_path / "server.log", **settings)
    try:
        body = {"inputs": images(8, seed=3), "samples": 64, "seed": 1}
        rows_before = score_metric(url, "vae_batch_rows_sum")

        async def burst():
            async with httpx.AsyncClient(base_url=url, timeout=60, limits=httpx.Limits(max_connections=250)) as client:
                return await asyncio.gather(*(client.post("/elbo", json=body) for _ in range(200)))

        codes = [r.status_code for r in asyncio.run(burst())]
        assert set(codes) == {200, 503}
        assert score_metric(url, "vae_batch_rows_sum") - rows_before == 8 * codes.count(200)
        too_big = httpx.post(f"{url}/elbo", json={**body, "samples": 257}, timeout=60)  # 8 × 257 > 2048 rows
        assert too_big.status_code == 422 and "limit of 2048" in str(too_big.json()["detail"])
    finally:
        server.stop()


def test_contradicting_limits_are_refused_at_start(tmp_path):
    log = tmp_path / "server.log"
    refused = vae_serve(ROOT / "models", log, max_queue_rows=2048, max_sample_rows=4096)  # both set, they clash
    with pytest.raises(RuntimeError, match="exited with 1"):
        refused.start(timeout_s=30)
    refused.stop()
    assert "VAE_MAX_SAMPLE_ROWS (4096) is above VAE_MAX_QUEUE_ROWS (2048)" in log.read_text()


@pytest.mark.slow
def test_a_burst_with_a_3_s_deadline_gets_no_504s_and_its_200s_within_the_deadline(tmp_path):
    """300 clients at once, each /elbo of 8 images × K=256 with X-Timeout-Ms: 3000, on default settings:
    what cannot finish in time is told so at once (503 + Retry-After) instead of timing out in the queue."""
    server, url = start_server(ROOT / "models", tmp_path / "server.log")
    try:
        body = json.dumps({"inputs": images(8, seed=4), "samples": 256, "seed": 2}).encode()
        result = burst(f"{url}/elbo", body, {"content-type": "application/json", "x-timeout-ms": "3000"}, 300)
        outcomes = result["outcomes"]
        assert set(outcomes) <= {"200", "503", "504"} and outcomes.get("504", 0) <= 3, outcomes
        assert outcomes.get("200", 0) >= 1 and result["max_ok_ms"] < 3000, result  # some served, each in time
        assert result["all_503_say_retry_after"], result
    finally:
        server.stop()


@pytest.mark.slow
def test_sigterm_drains_hundreds_of_accepted_requests_then_exits_0(tmp_path):
    server, url = start_server(
        ROOT / "models",
        tmp_path / "server.log",
        max_concurrent_runs=1,
        max_queue_rows=100000,
        max_sample_rows=100000,
        shutdown_grace_s=60,
        workers=1,  # one queue holds all 300 at once (tests/contract/test_workers.py drains two workers)
    )
    body = {"inputs": images(2, seed=1), "samples": 50, "seed": 2}  # 300 × 100 decoder rows: a few seconds of work

    async def scenario():
        limits = httpx.Limits(max_connections=400)
        async with httpx.AsyncClient(base_url=url, timeout=90, limits=limits) as client:
            calls = [asyncio.create_task(client.post("/elbo", json=body)) for _ in range(300)]
            while metric(url, "vae_requests_in_flight ") < 300:  # all 300 accepted and waiting
                await asyncio.sleep(0.02)
            server.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.2)
            async with httpx.AsyncClient(base_url=url, timeout=10) as newcomer:  # a new connection, during the drain
                ready, late = await newcomer.get("/health/ready"), await newcomer.post("/sample", json={"n": 1})
            return await asyncio.gather(*calls), ready, late

    try:
        responses, ready, late = asyncio.run(scenario())
        assert [r.status_code for r in responses] == [200] * 300
        assert ready.status_code == 503 and late.status_code == 503 and late.headers["retry-after"] == "1"
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()
    log = (tmp_path / "server.log").read_text()
    assert "SIGTERM: draining" in log and "drained: every request received was answered" in log


def test_api_keys_guard_inference_while_health_and_metrics_stay_open(tmp_path):
    server, url = start_server(
        ROOT / "models", tmp_path / "server.log", api_keys="first-key,second-key", cors_origins="http://playground.test"
    )
    try:
        assert httpx.post(f"{url}/sample", json={"n": 1}).status_code == 401
        assert httpx.post(f"{url}/sample", json={"n": 1}, headers={"X-API-Key": "second-kex"}).status_code == 401
        bearer = httpx.post(f"{url}/sample", json={"n": 1}, headers={"Authorization": "Bearer second-key"})
        api_key = httpx.post(f"{url}/sample", json={"n": 1}, headers={"X-API-Key": "first-key"})
        assert bearer.status_code == 200 and api_key.status_code == 200
        oip = httpx.post(f"{url}/v2/models/fashion-mnist-decoder/infer", content=b"{}")
        assert oip.status_code == 401 and "API key" in oip.json()["error"]
        for path in ("/health/live", "/health/ready", "/metrics", "/v2/health/ready", "/models"):
            assert httpx.get(url + path).status_code == 200, path

        preflight = httpx.options(
            f"{url}/sample",
            headers={
                "Origin": "http://playground.test",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type,x-api-key",
            },
        )
        assert (
            preflight.status_code == 200
            and preflight.headers["access-control-allow-origin"] == "http://playground.test"
        )
        other = httpx.post(
            f"{url}/sample", json={"n": 1}, headers={"Origin": "http://evil.test", "X-API-Key": "first-key"}
        )
        assert "access-control-allow-origin" not in other.headers
        exposed = httpx.post(
            f"{url}/sample", json={"n": 1}, headers={"Origin": "http://playground.test", "X-API-Key": "first-key"}
        )
        assert "x-seed" in exposed.headers["access-control-expose-headers"].lower()
    finally:
        server.stop()


def test_request_ids_are_echoed_and_in_every_json_log_line(tmp_path):
    log_path = tmp_path / "server.log"
    server, url = start_server(ROOT / "models", log_path, access_log="true")
    try:
        echoed = httpx.post(f"{url}/sample", json={"n": 1}, headers={"X-Request-ID": "trace-42"})
        hostile = "spaces {and} braces " + "x" * 200  # not an id: replaced, never echoed into headers or logs
        made = httpx.post(f"{url}/sample", json={"n": 1}, headers={"X-Request-ID": hostile})
        assert echoed.headers["x-request-id"] == "trace-42"
        assert len(made.headers["x-request-id"]) == 32 and hostile not in (tmp_path / "server.log").read_text()
    finally:
        server.stop()
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]  # every line is JSON
    access = [e for e in lines if e["logger"] == "service.access" and e.get("request_id") == "trace-42"]
    assert access and access[0]["path"] == "/sample" and access[0]["status"] == 200 and access[0]["duration_ms"] > 0


def test_broken_models_are_refused_at_load_and_the_others_served(tmp_path):
    models = tmp_path / "models"
    for name in ("fashion-mnist-2d", "tampered", "truncated", "wrong-latent-dim"):
        shutil.copytree(ROOT / "models" / "fashion-mnist-2d", models / name)
    with (models / "tampered" / "weights.bin").open("r+b") as f:
        f.seek(100)
        f.write(b"\xff\xff\xff\xff")
    decoder = models / "truncated" / "decoder.onnx"
    decoder.write_bytes(decoder.read_bytes()[:100])
    manifest = json.loads((models / "wrong-latent-dim" / "manifest.json").read_text())
    manifest["latent_dim"] = 8
    (models / "wrong-latent-dim" / "manifest.json").write_text(json.dumps(manifest))
    server, url = start_server(models, tmp_path / "server.log", default_model="fashion-mnist-2d", workers=1)
    try:
        listing = {m["name"]: m for m in httpx.get(f"{url}/models").json()["models"]}
        assert listing["fashion-mnist-2d"]["status"] == "available"
        for name, reason in (
            ("tampered", "sha256"),
            ("truncated", "sha256"),
            ("wrong-latent-dim", "latent_dim 8 disagrees"),
        ):
            assert listing[name]["status"] == "unavailable" and reason in listing[name]["reason"], listing[name]
            refused = httpx.post(f"{url}/sample", json={"model": name, "n": 1})
            assert refused.status_code == 503 and name in refused.json()["detail"]
        assert httpx.post(f"{url}/sample", json={"n": 2}).status_code == 200
    finally:
        server.stop()
    refusals = [line for line in (tmp_path / "server.log").read_text().splitlines() if "refused" in line]
    assert len(refusals) == 3  # one line per broken model (one process: each worker logs its own)


SOAK_SECONDS = float(os.environ.get("VAE_SOAK_SECONDS", 60))


@pytest.mark.slow
def test_a_mixed_soak_does_not_grow_memory(tmp_path):
    server, url = start_server(ROOT / "models", tmp_path / "server.log")
    z = np.random.default_rng(0).standard_normal((16, 32)).tolist()
    requests = [
        ("/sample", {"n": 8}),
        ("/decode", {"latents": z}),
        ("/encode", {"inputs": images(8), "samples": 2}),
        ("/elbo", {"inputs": images(8), "samples": 16}),
        ("/sample", {"model": "fashion-mnist-2d", "n": 4, "format": "png"}),
    ]
    oip = {"inputs": [{"name": "z", "shape": [4, 32], "datatype": "FP32", "data": [0.1] * 128}]}

    async def traffic(seconds: float) -> list[int]:
        codes, stop = [], time.monotonic() + seconds

        async def worker(client, i):
            while time.monotonic() < stop:
                path, body = requests[i % len(requests)]
                i += 1
                response = await (
                    client.post(path, json=body)
                    if i % 7
                    else client.post("/v2/models/fashion-mnist-decoder/infer", content=json.dumps(oip))
                )
                codes.append(response.status_code)

        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            await asyncio.gather(*(worker(client, i) for i in range(16)))
        return codes

    try:
        warm = asyncio.run(traffic(min(10, SOAK_SECONDS / 4)))  # arenas and caches reach their working size
        settled = rss_mb(server.process.pid)
        codes = asyncio.run(traffic(SOAK_SECONDS))
        final = rss_mb(server.process.pid)
    finally:
        server.stop()
    assert set(warm + codes) == {200} and len(codes) > 100 * math.ceil(SOAK_SECONDS / 60)
    assert final - settled < max(15.0, 0.05 * settled), (
        f"RSS {settled:.0f} MB -> {final:.0f} MB over {len(codes)} requests"
    )
