"""A Ray cluster of two nodes on this machine (one CPU each): ``vae-serve score --ray-address`` runs
its actors on both and every row equals the local run's; Ray Serve places a replica on each and
rolls a new model version out under load with no failed request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.live import free_port

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


# A test cluster on loopback, without Ray's token authentication (on by default for `ray start
# --head`): the drivers of this process and of its subprocesses join it as they are.
NO_AUTH = {**os.environ, "RAY_AUTH_MODE": "disabled"}


def ray(*args: str) -> None:
    subprocess.run([RAY, *args], check=True, capture_output=True, timeout=180, env=NO_AUTH)


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a second node, one CPU each (so a pool of two actors needs both), stopped after."""
    port, dashboard = free_port(), free_port()
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:  # the dashboard serves Ray's state API (where each actor runs)
        ray("start", "--head", f"--port={port}", f"--dashboard-port={dashboard}", "--dashboard-host=127.0.0.1",
            *common, '--resources={"head": 1}')  # fmt: skip
        ray("start", f"--address=127.0.0.1:{port}", *common, '--resources={"second": 1}')
        yield f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def score(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "service", "score", *args, "--model-dir", str(ROOT / "models")]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=NO_AUTH)


def table(folder: Path) -> pa.Table:
    parts = sorted(p for p in folder.rglob("*.parquet"))
    rows = pa.concat_tables([pq.read_table(p) for p in parts])
    return rows.sort_by([("id", "ascending")])


def test_the_same_job_on_two_ray_nodes_writes_the_local_runs_rows(two_nodes, tmp_path):
    x = (np.random.default_rng(7).random((2000, 28, 28)) < 0.3).astype(np.float32)  # 32 blocks for two actors
    x[11, 0, 0] = np.nan  # skipped on either path, with the same reason
    np.save(tmp_path / "x.npy", x)
    args = [str(tmp_path / "x.npy"), "--what", "elbo,latent", "--samples", "16", "--seed", "9", "--chunk-rows", "64"]
    local = score(*args, "--out", str(tmp_path / "local"))
    assert local.returncode == 0, local.stderr
    on_ray = score(*args, "--out", str(tmp_path / "ray"), "--ray-address", two_nodes[0], "--ray-actors", "2")
    assert on_ray.returncode == 0, on_ray.stderr
    summary = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert summary["rows"] == 1999 and summary["skipped"] == 1 and len(summary["nodes"]) == 2  # both nodes scored
    assert json.loads((tmp_path / "ray" / "skipped.json").read_text()) == json.loads(
        (tmp_path / "local" / "skipped.json").read_text()
    )
    mine, theirs = table(tmp_path / "ray"), table(tmp_path / "local")
    assert mine.column("id").to_pylist() == theirs.column("id").to_pylist()
    for name in ("elbo", "reconstruction", "kl", "log_likelihood", "gap"):
        np.testing.assert_allclose(mine.column(name).to_numpy(), theirs.column(name).to_numpy(), rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(
        np.stack(mine.column("mean").to_numpy(zero_copy_only=False)),
        np.stack(theirs.column("mean").to_numpy(zero_copy_only=False)),
        rtol=1e-6,
        atol=1e-6,
    )


def test_parquet_on_ray_reads_its_rows_by_row_group_as_the_local_run_does(two_nodes, tmp_path):
    x = (np.random.default_rng(8).random((500, 784)) < 0.3).astype(np.float32)
    pq.write_table(pa.table({"pixels": list(x)}), tmp_path / "x.parquet", row_group_size=70)  # groups across blocks
    args = [str(tmp_path / "x.parquet"), "--column", "pixels", "--seed", "3", "--chunk-rows", "64"]
    assert score(*args, "--out", str(tmp_path / "local")).returncode == 0
    on_ray = score(*args, "--out", str(tmp_path / "ray"), "--ray-address", two_nodes[0])
    assert on_ray.returncode == 0, on_ray.stderr
    mine, theirs = table(tmp_path / "ray"), table(tmp_path / "local")
    assert mine.column("id").to_pylist() == theirs.column("id").to_pylist() and mine.num_rows == 500
    np.testing.assert_allclose(mine.column("elbo").to_numpy(), theirs.column("elbo").to_numpy(), rtol=1e-6, atol=1e-5)


def test_ray_serve_places_a_replica_on_each_node_and_rolls_out_a_version_under_load(two_nodes, tmp_path):
    import ray as ray_api
    from ray import serve
    from ray.util.state import list_actors

    from service.ray_app import build_app
    from tests.contract.test_lifecycle import make_version

    repo = tmp_path / "repo"
    make_version(repo / "m" / "1", 1)
    address, dashboard = two_nodes
    ray_api.init(address=address, log_to_driver=False, configure_logging=False)
    port = free_port()
    url = f"http://127.0.0.1:{port}"

    def deploy(rollout: str) -> None:
        env = {"VAE_MODEL_DIR": str(repo), "VAE_DEFAULT_MODEL": "m", "VAE_LOG_LEVEL": "warning", "ROLLOUT": rollout}
        options = {"num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5, "runtime_env": {"env_vars": env}}}
        serve.run(build_app(options), name="vae-serve", route_prefix="/")

    answers: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            while not stop.is_set():
                response = client.post("/sample", json={"n": 1, "seed": 1})
                answers.append((response.status_code, response.headers.get("x-model-version", "")))

    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        deploy("1")
        alive = list_actors(address=dashboard, filters=[("state", "=", "ALIVE")])
        replicas = [a for a in alive if "ServeReplica" in a.class_name]
        assert len({a.node_id for a in replicas}) == 2  # one replica on each node
        threads = [threading.Thread(target=load) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(2)
        make_version(repo / "m" / "2", 2)
        deploy("2")  # a rolling update: new replicas load version 2, the old ones drain
        time.sleep(2)
        stop.set()
        for thread in threads:
            thread.join()
    finally:
        stop.set()
        serve.shutdown()
        ray_api.shutdown()
    statuses = {status for status, _ in answers}
    versions = [version for _, version in answers]
    assert statuses == {200}, f"{len(answers)} answers: {statuses}"
    assert "1" in versions and versions[-20:] == ["2"] * 20  # served 1, then only 2
