"""Observers report on requests and never decide one: a failing hook is logged once, counted, and
the batch's requests still get their answers."""

import asyncio
import logging

import numpy as np

from service.batcher import Batcher
from service.observers import BatchObserver, FanOut


class Broken(BatchObserver):
    def admitted(self, jobs):
        raise RuntimeError("admitted is broken")

    def run_done(self, rows, compute_s, request_s, ok):
        raise RuntimeError("run_done is broken")

    def queue_wait(self, seconds):
        raise ZeroDivisionError("queue_wait is broken")


class Recorder(BatchObserver):
    def __init__(self):
        self.waits, self.runs = [], []

    def queue_wait(self, seconds):
        self.waits.append(seconds)

    def run_done(self, rows, compute_s, request_s, ok):
        self.runs.append((rows, ok))


def test_a_failing_observer_leaves_every_answer_and_the_other_observers_alone(caplog):
    recorder = Recorder()
    fan_out = FanOut(Broken(), recorder)

    async def main():
        batcher = Batcher(lambda inputs: {"y": inputs["x"] * 2}, {"x": 0}, max_batch_rows=64, observer=fan_out)
        answers = await asyncio.gather(*(batcher.submit({"x": np.full((1, 2), i, np.float32)}) for i in range(5)))
        answers.append(await batcher.submit({"x": np.ones((2, 2), np.float32)}))
        await batcher.close()
        return answers

    with caplog.at_level(logging.ERROR, logger="service.observers"):
        answers = asyncio.run(main())
    assert [a["y"][0, 0] for a in answers] == [0, 2, 4, 6, 8, 2]
    assert len(recorder.waits) == 6 and all(ok for _, ok in recorder.runs) and sum(r for r, _ in recorder.runs) == 7
    runs = len(recorder.runs)
    assert fan_out.failures == {
        ("Broken", "admitted"): 6,
        ("Broken", "run_done"): runs,
        ("Broken", "queue_waits"): runs,
    }
    logged = [r for r in caplog.records if "observer Broken failed" in r.getMessage()]
    assert len(logged) == 3  # once per hook, not once per failure


def test_hooks_an_observer_leaves_alone_are_not_called():
    fan_out = FanOut(BatchObserver(), Recorder())
    assert fan_out._callers["admitted"] == [] and len(fan_out._callers["queue_waits"]) == 1
