"""Two worker processes behind one port: what one process's state was stays right across them.

Every request here opens its own connection, so the kernel hands requests to either worker. The
Prometheus multiprocess directory is the test's own, so it can see which worker processes served.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT, start_server
from .test_lifecycle import ADMIN, admin, make_version

WORKERS = 2


def fresh(url: str, method: str, path: str, **kwargs) -> httpx.Response:
    """One request on a connection of its own (so either worker may take it)."""
    with httpx.Client(base_url=url, timeout=30) as http:
        return http.request(method, path, **kwargs)


def worker_pids(server) -> list[int]:
    """The live worker in each slot, as the supervisor logs them."""
    slots = dict(re.findall(r"worker (\d+) started \(pid (\d+)\)", server.log_path.read_text()))
    return [int(pid) for pid in slots.values() if _running(int(pid))]


def _running(pid: int) -> bool:
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def served_by(metrics_dir: Path) -> set[int]:
    """Pids that recorded a request: prometheus_client writes one file per process and kind."""
    return {int(m.group(1)) for p in metrics_dir.iterdir() if (m := re.match(r"histogram_(\d+)\.db", p.name))}


def counted(url: str, endpoint: str, status: int = 200) -> float:
    text = fresh(url, "GET", "/metrics").text
    pattern = rf'^vae_requests_total\{{endpoint="{re.escape(endpoint)}",status="{status}"\}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


@pytest.fixture
def two_workers(tmp_path):
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)  # the server inherits it
    try:
        server, url = start_server(ROOT / "models", tmp_path / "server.log", workers=WORKERS)
    finally:
        del os.environ["PROMETHEUS_MULTIPROC_DIR"]
    yield server, url, metrics_dir
    server.stop()


def test_metrics_and_statistics_count_every_worker_and_a_seed_answers_alike(two_workers):
    server, url, metrics_dir = two_workers
    answers = [fresh(url, "POST", "/sample", json={"n": 2, "seed": 11}) for _ in range(40)]
    assert {a.status_code for a in answers} == {200}
    assert len({a.content for a in answers}) == 1  # the same seed, the same bytes, whichever worker
    assert len(served_by(metrics_dir)) == WORKERS  # both workers served some of them
    # Any worker's scrape counts all 40, and OIP statistics sum the workers' decoder runs.
    for _ in range(6):
        assert counted(url, "/sample") == 40
    stats = fresh(url, "GET", "/v2/models/fashion-mnist-decoder/stats").json()["model_stats"][0]
    warm_up_rows = stats["inference_count"] - 80
    assert stats["inference_count"] >= 80 and warm_up_rows >= 0
    assert sum(b["compute_infer"]["count"] for b in stats["batch_stats"]) == stats["execution_count"]


def test_a_worker_that_dies_is_replaced_and_logged_and_readiness_waits_for_it(two_workers):
    server, url, _ = two_workers
    victim = worker_pids(server)[0]
    os.kill(victim, signal.SIGKILL)
    # While one worker is gone the other answers; readiness is 503 until the replacement is ready.
    statuses, ready = [], []
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        statuses.append(fresh(url, "POST", "/sample", json={"n": 1}).status_code)
        ready.append(fresh(url, "GET", "/health/ready").status_code)
        if ready[-1] == 200 and victim not in worker_pids(server) and len(worker_pids(server)) == WORKERS:
            break
    assert set(statuses) == {200}
    assert ready[-1] == 200
    log = server.log_path.read_text()
    assert re.search(rf"worker \d \(pid {victim}\) exited with code -9; starting a replacement", log)
    assert len(worker_pids(server)) == WORKERS and victim not in worker_pids(server)


@pytest.mark.slow
def test_a_load_answers_when_every_worker_serves_it_and_a_replacement_serves_it_too(tmp_path):
    root = tmp_path / "repo"
    make_version(root / "m" / "1", 1)
    server, url = start_server(root, tmp_path / "server.log", default_model="m", model_control="explicit",
                               admin_keys=ADMIN, workers=WORKERS)  # fmt: skip
    try:
        make_version(root / "m" / "2", 2)
        assert fresh(url, "POST", "/v2/repository/models/m/load", headers=admin()).status_code == 200
        # From the moment the load answered, no worker serves version 1 again.
        assert {fresh(url, "GET", "/models/m").json()["version"] for _ in range(30)} == {"2"}
        shutil.copytree(root / "m" / "2", tmp_path / "keep")
        assert fresh(url, "POST", "/v2/repository/models/m/unload", headers=admin()).status_code == 200
        assert {fresh(url, "POST", "/sample", json={"model": "m"}).status_code for _ in range(20)} == {404}
        # A replacement worker starts with the folder (which still holds m) but serves what the others do.
        os.kill(worker_pids(server)[0], signal.SIGKILL)
        deadline = time.monotonic() + 60  # (not ready: with m unloaded no worker serves a model)
        while "joined: unload m" not in server.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)  # the replacement accepts once its lifespan, the replay included, is done
        assert {fresh(url, "POST", "/sample", json={"model": "m"}).status_code for _ in range(20)} == {404}
    finally:
        server.stop()


@pytest.mark.slow
def test_sighup_reaches_every_worker(tmp_path):
    root = tmp_path / "repo"
    make_version(root / "m" / "1", 1)
    server, url = start_server(root, tmp_path / "server.log", default_model="m", workers=WORKERS)
    try:
        make_version(root / "m" / "2", 2)
        server.signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        versions: list[str] = []
        while time.monotonic() < deadline:
            versions = [fresh(url, "GET", "/models/m").json()["version"] for _ in range(20)]
            if set(versions) == {"2"}:
                break
            time.sleep(0.2)
        assert set(versions) == {"2"}
    finally:
        server.stop()


def test_sigterm_drains_every_worker_with_requests_in_flight_and_the_supervisor_exits(two_workers):
    server, url, metrics_dir = two_workers
    pids = worker_pids(server)
    body = {"inputs": [[0.0] * 784] * 2, "samples": 50, "seed": 1}  # 100 score rows each

    async def scenario():
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(base_url=url, timeout=90, limits=limits) as client:
            calls = [asyncio.create_task(client.post("/elbo", json=body)) for _ in range(120)]
            while (accepted := await in_flight(client)) < 40:  # many accepted and waiting, on both workers
                await asyncio.sleep(0.02)
            server.process.send_signal(signal.SIGTERM)
            return accepted, await asyncio.gather(*calls)

    accepted, responses = asyncio.run(scenario())
    # Every request is answered: those accepted before SIGTERM with their result, those that arrived
    # during the drain with a 503 that says to retry elsewhere. None is cut off.
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= accepted, [
        r.text for r in responses if r.status_code != 200
    ][:3]
    assert all(r.headers["retry-after"] == "1" and "shutting down" in r.text for r in responses if r.status_code == 503)
    assert len(served_by(metrics_dir)) == WORKERS
    assert server.process.wait(timeout=60) == 0
    assert not any(_running(pid) for pid in pids)
    log = server.log_path.read_text()
    assert log.count("drained: every request received was answered") == WORKERS
    assert "supervisor: every worker has exited" in log


async def in_flight(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    found = re.search(r"^vae_requests_in_flight (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) - 1 if found else 0.0  # less the scrape itself


@pytest.mark.slow
def test_a_killed_supervisor_leaves_no_process_and_no_port_behind(tmp_path):
    """SIGKILL the supervisor: its workers see the control line close, drain and exit; the forkserver
    and resource tracker follow them, the port is free, and readiness never hangs meanwhile."""
    server, url = start_server(ROOT / "models", tmp_path / "server.log", workers=WORKERS)
    group = server.process.pid  # the server runs in a session of its own: every process of it
    try:
        assert fresh(url, "GET", "/health/ready").status_code == 200
        os.kill(group, signal.SIGKILL)
        server.process.wait(timeout=10)
        deadline, statuses = time.monotonic() + 20, []
        while time.monotonic() < deadline and _group_alive(group):
            with contextlib.suppress(httpx.ConnectError):  # refused once the port closed; a hang fails the test
                statuses.append(httpx.get(f"{url}/health/ready", timeout=5).status_code)
            time.sleep(0.5)  # a probe's pace: the drain ends after 0.2 s with no new request
        assert not _group_alive(group), f"left running: {_group_pids(group)}"
        assert set(statuses) <= {200, 503}
        with socket.socket() as probe:  # the port is free for a restarted server
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", server.port))
        assert "the supervisor closed its control connection; draining" in server.log_path.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(group, signal.SIGKILL)
        server.stop()  # closes its log


def _group_pids(group: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == group and fields[0] != "Z":  # the process group, and not a zombie
                pids.append(int(stat.parent.name))
    return pids


def _group_alive(group: int) -> bool:
    return bool(_group_pids(group))


@pytest.mark.slow
def test_in_poll_mode_the_workers_follow_one_clock_and_agree_once_the_rescan_answered(tmp_path):
    """The supervisor asks every worker to rescan at once; from the moment all have answered (its
    log says what every worker serves), no worker serves the old version."""
    root = tmp_path / "repo"
    make_version(root / "m" / "1", 1)
    server, url = start_server(root, tmp_path / "server.log", default_model="m", model_control="poll",
                               model_poll_s=0.3, workers=WORKERS)  # fmt: skip
    try:
        make_version(root / "m" / "2", 2)
        deadline = time.monotonic() + 30
        while "rescan: every worker serves m 2" not in server.log_path.read_text():
            assert time.monotonic() < deadline, "the workers did not rescan"
            time.sleep(0.05)
        assert {fresh(url, "GET", "/models/m").json()["version"] for _ in range(30)} == {"2"}
    finally:
        server.stop()
