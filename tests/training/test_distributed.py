"""torchrun DDP: two CPU ranks (gloo) take bit-identical steps, and match one process on the same global batch."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.training.conftest import TINY
from training.distributed import World, shard

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
SETS = [arg for item in [*TINY, "train.max_steps=5", "train.batch_size=60"] for arg in ("--set", item)]
STEP = re.compile(r"(?:\[rank (\d)\] )?DEBUG training\.train: step (\d+) parameters ([0-9a-f]{16})")


def train(runs_dir: Path, launcher: list[str]) -> str:
    command = [
        *launcher,
        "-m",
        "training",
        "train",
        "fashion-mnist",
        *SETS,
        "--runs-dir",
        str(runs_dir),
        "--log-level",
        "debug",
        "--no-progress",
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.parametrize("rows, size", [(60, 2), (61, 2), (7, 3), (1, 2)])
def test_shards_cover_the_global_batch_once(rows, size):
    parts = [shard(rows, World(rank, size)) for rank in range(size)]
    covered = [i for p in parts for i in range(rows)[p]]
    assert covered == list(range(rows))
    assert max(p.stop - p.start for p in parts) - min(p.stop - p.start for p in parts) <= 1


def test_two_ranks_step_in_lockstep_and_match_one_process(tmp_path):
    single = train(tmp_path / "single", [sys.executable])
    ddp = train(
        tmp_path / "ddp", [str(Path(sys.executable).with_name("torchrun")), "--standalone", "--nproc_per_node", "2"]
    )

    steps: dict[int, dict[str, str]] = {}
    for rank, step, digest in STEP.findall(ddp):
        steps.setdefault(int(step), {})[rank] = digest
    assert sorted(steps) == [1, 2, 3, 4, 5]
    assert all(set(by_rank) == {"0", "1"} and len(set(by_rank.values())) == 1 for by_rank in steps.values()), steps
    assert "distributed: 2 ranks, backend gloo" in ddp

    one = torch.load(tmp_path / "single" / "fashion-mnist" / "last.pt", weights_only=False)
    two = torch.load(tmp_path / "ddp" / "fashion-mnist" / "last.pt", weights_only=False)
    assert one["step"] == two["step"] == 5
    for name, weight in one["model"].items():  # the same steps, up to the order of floating-point sums
        torch.testing.assert_close(two["model"][name], weight, rtol=1e-4, atol=1e-5, msg=name)
    records = [
        json.loads(line) for line in (tmp_path / "ddp" / "fashion-mnist" / "metrics.jsonl").read_text().splitlines()
    ]
    reference = json.loads((tmp_path / "single" / "fashion-mnist" / "metrics.jsonl").read_text().splitlines()[0])
    assert len(records) == 1  # rank 0 alone writes
    assert records[0]["train_loss"] == pytest.approx(reference["train_loss"], rel=1e-5)
    assert records[0]["val_elbo"] == pytest.approx(reference["val_elbo"], rel=1e-5)
    assert len(STEP.findall(single)) == 5
