"""``vae-serve score --ray-address`` on a Ray cluster of two nodes on this machine: the actors run on
both, and every row equals the local run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.live import free_port

pytestmark = pytest.mark.ray

ROOT = Path(__file__).resolve().parents[2]
RAY = str(Path(sys.executable).with_name("ray"))


TOKEN = {**os.environ, "RAY_AUTH_MODE": "token"}  # the head's token auth: a node or driver joins with its token


def ray(*args: str) -> None:
    subprocess.run([RAY, *args], check=True, capture_output=True, timeout=180, env=TOKEN)


@pytest.fixture
def two_nodes():
    """A head and a second node, one CPU each (so a pool of two actors needs both), stopped after."""
    port = free_port()
    common = ["--num-cpus=1", "--disable-usage-stats"]
    try:
        ray("start", "--head", f"--port={port}", "--include-dashboard=false", *common, '--resources={"head": 1}')
        ray("start", f"--address=127.0.0.1:{port}", *common, '--resources={"second": 1}')
        yield f"127.0.0.1:{port}"
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, timeout=120)


def score(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "service", "score", *args, "--model-dir", str(ROOT / "models")]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=TOKEN)


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
    on_ray = score(*args, "--out", str(tmp_path / "ray"), "--ray-address", two_nodes, "--ray-actors", "2")
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
