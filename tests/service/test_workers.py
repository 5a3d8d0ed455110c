"""The worker-process pieces without HTTP: how many workers, their settings, the fan-out's replies."""

from __future__ import annotations

import asyncio
import os
from types import SimpleNamespace

import pytest

from service import workers
from service.control import ABSENT
from service.errors import UnknownModel
from service.metrics import GraphStats, merge_reports
from service.peers import LocalPeers, answer, cluster_not_ready, raise_errors
from service.settings import Settings


def test_the_cpu_limit_of_a_cgroup_bounds_the_usable_cores(tmp_path, monkeypatch):
    limit = tmp_path / "cpu.max"
    monkeypatch.setattr(workers, "CGROUP_CPU_MAX", limit)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    limit.write_text("max 100000\n")
    assert workers.usable_cores() == 8
    limit.write_text("150000 100000\n")  # 1.5 CPUs: two workers share them
    assert workers.usable_cores() == 2
    limit.write_text("50000 100000\n")
    assert workers.usable_cores() == 1
    limit.unlink()  # no cgroup v2 file: the affinity decides
    assert workers.usable_cores() == 8


def test_one_worker_per_gpu_on_a_cuda_host_else_one_per_core(monkeypatch):
    monkeypatch.setattr(workers, "usable_cores", lambda: 16)
    monkeypatch.setattr(workers, "gpu_count", lambda: 0)
    assert workers.default_workers() == 16
    monkeypatch.setattr(workers, "gpu_count", lambda: 2)
    assert workers.default_workers() == 2


def test_workers_divide_the_cores_and_each_takes_its_own_gpu(monkeypatch):
    monkeypatch.setattr(workers, "usable_cores", lambda: 4)
    settings = Settings(workers=2)
    first, second = (workers.worker_settings(settings, slot, 2, gpus=2) for slot in (0, 1))
    assert (first.ort_intra_op_threads, second.ort_intra_op_threads) == (2, 2)
    assert (first.cuda_device, second.cuda_device, first.workers) == (0, 1, 1)
    assert workers.worker_settings(settings, 0, 8, gpus=0).ort_intra_op_threads == 1  # never 0 (= every core)
    chosen = Settings(ort_intra_op_threads=3)
    assert workers.worker_settings(chosen, 1, 2, gpus=0).ort_intra_op_threads == 3  # a value the user set stays


def test_statistics_from_several_workers_sum_as_one_process_would():
    a, b = GraphStats(), GraphStats()
    a.queue_wait(0.001)
    a.run_done(rows=4, compute_s=0.002, request_s=[0.003, 0.004], ok=True)
    b.run_done(rows=4, compute_s=0.001, request_s=[0.002], ok=True)
    b.run_done(rows=1, compute_s=0.001, request_s=[0.002], ok=False)
    merged = merge_reports([a.report("m-decoder", "1"), b.report("m-decoder", "1")])
    assert (merged["name"], merged["version"]) == ("m-decoder", "1")
    assert merged["inference_count"] == 8 and merged["execution_count"] == 3
    assert merged["inference_stats"]["success"]["count"] == 3 and merged["inference_stats"]["fail"]["count"] == 1
    assert merged["inference_stats"]["queue"]["count"] == 1
    sizes = {s["batch_size"]: s["compute_infer"] for s in merged["batch_stats"]}
    assert sizes == {1: {"count": 1, "ns": 1_000_000}, 4: {"count": 2, "ns": 3_000_000}}


def state(ready=True, draining=False, models=("m",)) -> SimpleNamespace:
    registry = SimpleNamespace(models=dict.fromkeys(models), ready=ready)
    return SimpleNamespace(registry=registry, lifecycle=SimpleNamespace(draining=draining))


class Peers:
    def __init__(self, replies):
        self.replies = replies

    async def all(self, call):
        return self.replies


@pytest.mark.parametrize(
    "own, replies, problem",
    [
        (state(), [{"problem": None}, {"problem": None}], None),
        (state(), [{"problem": None}, {ABSENT: 1}], "worker 1 is starting"),
        (state(), [{"problem": None}, {"problem": "warming up"}], "warming up"),
        (state(draining=True), [{"problem": None}], "shutting down"),
        (state(models=()), [{"problem": None}], "no models loaded"),
    ],
)
def test_the_server_is_ready_only_when_every_worker_is(own, replies, problem):
    own.peers = Peers(replies)
    assert asyncio.run(cluster_not_ready(own)) == problem


def test_a_refusal_on_any_worker_is_raised_as_its_domain_error_and_absent_workers_are_left_out():
    assert raise_errors([{"entry": 1}, {ABSENT: 1}]) == [{"entry": 1}]
    with pytest.raises(UnknownModel, match="not loaded"):
        raise_errors([{"entry": 1}, {"error": "UnknownModel", "message": "model 'x' is not loaded"}])


def test_one_process_answers_its_own_calls():
    peers = LocalPeers()
    own = state(ready=False)

    async def ask():
        await peers.start(own)
        return await peers.all({"op": "ready"})

    assert asyncio.run(ask()) == [{"problem": "warming up"}]
    with pytest.raises(ValueError, match="unknown call"):
        asyncio.run(answer(own, {"op": "reboot"}))
