"""The dynamic batcher with a fake runtime: no HTTP, no onnxruntime."""

import asyncio
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from service.batcher import (
    Batcher,
    DeadlineExceeded,
    QueueFull,
    TooLate,
    bucket_sizes,
    signature_of,
    split,
    take_batch,
)
from service.errors import TooLarge
from service.jobs import Job
from service.observers import BatchObserver

AXES = {"x": 0, "y": 0}


class FakeRuntime:
    """y = 3x + 1 row by row; records the rows of every run; optionally slow or poisoned."""

    def __init__(self, delay=0.0, poison=None):
        self.delay, self.poison = delay, poison
        self.runs: list[int] = []
        self.lock = threading.Lock()

    def __call__(self, inputs):
        x = inputs["x"]
        with self.lock:
            self.runs.append(len(x))
        if self.delay:
            time.sleep(self.delay)
        if self.poison is not None and np.any(x == self.poison):
            raise ValueError("poisoned batch")
        return {"y": 3 * x + 1}


def request(i, rows=1, width=4):
    return {"x": np.full((rows, width), float(i), dtype=np.float32) + np.arange(rows, dtype=np.float32)[:, None]}


def run(coro):
    return asyncio.run(coro)


def test_concurrent_requests_are_coalesced_and_match_unbatched_results():
    runtime = FakeRuntime(delay=0.01)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=64)
        reqs = [request(i, rows=1 + i % 3) for i in range(40)]
        results = await asyncio.gather(*(batcher.submit(r) for r in reqs))
        await batcher.close()
        return reqs, results

    reqs, results = run(main())
    assert len(runtime.runs) < 40
    assert sum(runtime.runs) == sum(len(r["x"]) for r in reqs)
    for req, res in zip(reqs, results):  # in order, each request gets exactly its own rows
        np.testing.assert_array_equal(res["y"], 3 * req["x"] + 1)


def test_greedy_batcher_runs_at_once_when_idle():
    runtime = FakeRuntime()

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=64)
        for i in range(3):  # one at a time: nothing to wait for, so three runs of one row
            await batcher.submit(request(i))
        await batcher.close()

    run(main())
    assert runtime.runs == [1, 1, 1]


def test_rows_not_requests_are_counted_against_the_limit():
    runtime = FakeRuntime(delay=0.005)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=8)
        await asyncio.gather(*(batcher.submit(request(i, rows=3)) for i in range(6)))
        await batcher.close()

    run(main())
    assert max(runtime.runs) <= 8 and sum(runtime.runs) == 18
    assert runtime.runs == [6, 6, 6]


def test_a_request_over_the_limit_runs_in_chunks():
    runtime = FakeRuntime()

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=4)
        req = request(0, rows=10)
        return req, await batcher.submit(req)

    req, res = run(main())
    assert runtime.runs == [4, 4, 2]
    np.testing.assert_array_equal(res["y"], 3 * req["x"] + 1)


def test_weighted_rows_chunk_by_cost():
    runtime = FakeRuntime()

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=64)
        return await batcher.submit(request(0, rows=10), weight=16)  # K = 16: 4 rows per run

    res = run(main())
    assert runtime.runs == [4, 4, 2] and res["y"].shape == (10, 4)


def test_an_exception_fails_only_the_requests_of_that_run():
    runtime = FakeRuntime(poison=2.0)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=2)
        # Queued together before the worker starts: runs are [0, 1], [2, 3], [4, 5].
        results = await asyncio.gather(*(batcher.submit(request(i)) for i in range(6)), return_exceptions=True)
        await batcher.close()
        return results

    results = run(main())
    assert runtime.runs == [2, 2, 2]
    assert [isinstance(r, ValueError) for r in results] == [False, False, True, True, False, False]
    np.testing.assert_array_equal(results[5]["y"], 3 * request(5)["x"] + 1)


def test_max_delay_waits_for_a_fuller_batch():
    runtime = FakeRuntime()

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=64, max_delay_s=0.2)

        async def later(i):
            await asyncio.sleep(0.01 * i)
            return await batcher.submit(request(i))

        await asyncio.gather(*(later(i) for i in range(5)))
        await batcher.close()

    run(main())
    assert runtime.runs == [5]


def test_max_delay_stops_waiting_when_the_batch_is_full():
    runtime = FakeRuntime()

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=4, max_delay_s=5.0)
        started = time.perf_counter()
        await asyncio.gather(*(batcher.submit(request(i)) for i in range(4)))
        await batcher.close()
        return time.perf_counter() - started

    assert run(main()) < 2.0
    assert runtime.runs == [4]


def test_requests_with_other_non_batch_shapes_are_not_mixed():
    runtime = FakeRuntime(delay=0.01)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=64)
        reqs = [request(i, width=4 if i % 2 else 6) for i in range(6)]
        results = await asyncio.gather(*(batcher.submit(r) for r in reqs))
        await batcher.close()
        return reqs, results

    reqs, results = run(main())
    assert sorted(runtime.runs) == [3, 3]
    for req, res in zip(reqs, results):
        np.testing.assert_array_equal(res["y"], 3 * req["x"] + 1)


def test_a_full_queue_refuses_new_work():
    runtime = FakeRuntime(delay=0.05)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=2, max_queue_rows=4)
        results = await asyncio.gather(*(batcher.submit(request(i, rows=2)) for i in range(4)), return_exceptions=True)
        await batcher.close()
        return results

    results = run(main())
    assert [type(r).__name__ for r in results] == ["dict", "dict", "QueueFull", "QueueFull"]


def test_a_cancelled_request_never_reaches_the_runtime():
    runtime = FakeRuntime(delay=0.05)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=1)
        first = asyncio.create_task(batcher.submit(request(0)))
        second = asyncio.create_task(batcher.submit(request(7)))
        await asyncio.sleep(0.01)  # the first is running, the second queued
        second.cancel()
        await first
        await asyncio.sleep(0.1)
        await batcher.close()

    run(main())
    assert runtime.runs == [1]


def test_padding_runs_bucket_shapes_and_trims_the_outputs():
    seen = []

    def runtime(inputs):
        seen.append(inputs["x"].shape[0])
        return {"y": inputs["x"] * 2}

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=16, pad_to_buckets=True)
        reqs = [request(i, rows=r) for i, r in enumerate((3, 2))]
        results = await asyncio.gather(*(batcher.submit(r) for r in reqs))
        alone = await batcher.submit(request(9, rows=9))
        return reqs, results, alone

    reqs, results, alone = run(main())
    assert seen == [8, 16]
    for req, res in zip(reqs, results):
        np.testing.assert_array_equal(res["y"], req["x"] * 2)
    assert alone["y"].shape == (9, 4)


def test_batch_axis_other_than_zero():
    def runtime(inputs):  # eps (K, B, Z) batched on axis 1, x (B, D) on axis 0
        return {"total": inputs["eps"].sum(axis=(0, 2)) + inputs["x"].sum(axis=1)}

    async def main():
        batcher = Batcher(runtime, {"x": 0, "eps": 1, "total": 0}, max_batch_rows=64)
        reqs = [
            {"x": np.full((b, 3), i, np.float32), "eps": np.ones((2, b, 5), np.float32)}
            for i, b in enumerate((1, 2, 3))
        ]
        return reqs, await asyncio.gather(*(batcher.submit(r, weight=2) for r in reqs))

    reqs, results = run(main())
    for req, res in zip(reqs, results):
        np.testing.assert_array_equal(res["total"], np.full(len(req["x"]), 10 + 3 * req["x"][0, 0]))


def test_small_pieces():
    assert bucket_sizes(1) == [1] and bucket_sizes(8) == [1, 2, 4, 8] and bucket_sizes(12) == [1, 2, 4, 8, 12]
    parts = split({"a": np.arange(6), "b": np.arange(12).reshape(2, 6)}, [1, 2, 3], {"a": 0, "b": 1})
    assert [p["a"].tolist() for p in parts] == [[0], [1, 2], [3, 4, 5]]
    assert parts[2]["b"].tolist() == [[3, 4, 5], [9, 10, 11]]
    loop = asyncio.new_event_loop()

    def job(width, rows):
        inputs = {"x": np.zeros((rows, width))}
        return Job(inputs, rows, rows, signature_of(inputs, {"x": 0}), loop.create_future())

    queue = deque([job(4, 2), job(5, 1), job(4, 3), job(4, 2)])
    first = take_batch(queue, max_cost=5)
    assert [j.rows for j in first] == [2, 3] and [j.rows for j in queue] == [1, 2]
    loop.close()


class OverlapRuntime(FakeRuntime):
    """Counts how many runs are inside the model at the same moment."""

    def __init__(self, delay):
        super().__init__(delay=delay)
        self.inside = self.most_inside = 0

    def __call__(self, inputs):
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        try:
            return super().__call__(inputs)
        finally:
            with self.lock:
                self.inside -= 1


@pytest.mark.parametrize("slots", [1, 2, 3])
def test_runs_in_flight_never_exceed_max_concurrent_runs(slots):
    runtime = OverlapRuntime(delay=0.02)
    executor = ThreadPoolExecutor(max_workers=4)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=2, max_concurrent_runs=slots, executor=executor)
        reqs = [request(i, rows=2) for i in range(12)]  # one run each: a full batch apiece
        results = await asyncio.gather(*(batcher.submit(r) for r in reqs))
        await batcher.close()
        return reqs, results

    reqs, results = run(main())
    executor.shutdown()
    assert runtime.most_inside == slots
    for req, res in zip(reqs, results):
        np.testing.assert_array_equal(res["y"], 3 * req["x"] + 1)


def test_batching_off_runs_one_request_per_run():
    runtime = FakeRuntime(delay=0.005)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=64, coalesce=False)
        await asyncio.gather(*(batcher.submit(request(i)) for i in range(10)))
        await batcher.close()

    run(main())
    assert runtime.runs == [1] * 10


class DropLog(BatchObserver):
    def __init__(self):
        self.drops = []

    def dropped(self, rows, reason):
        self.drops.append((rows, reason))


def test_a_request_still_queued_at_its_deadline_is_dropped_before_ort():
    runtime, log = FakeRuntime(delay=0.15), DropLog()
    executor = ThreadPoolExecutor(max_workers=2)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=2, max_concurrent_runs=1, executor=executor, observer=log)
        first = asyncio.create_task(batcher.submit(request(1, rows=2)))  # fills the only run slot for 150 ms
        await asyncio.sleep(0.01)
        started = time.perf_counter()
        with pytest.raises(DeadlineExceeded):
            await batcher.submit(request(2, rows=2), deadline=time.perf_counter() + 0.03)
        waited = time.perf_counter() - started
        await first
        assert batcher.queue.cost == 0 and not batcher.queue.jobs
        await batcher.close()
        return waited

    waited = run(main())
    executor.shutdown()
    assert 0.02 < waited < 0.12  # answered at its deadline, not when the slot freed
    assert runtime.runs == [2] and log.drops == [(2, "deadline")]


def test_a_request_already_running_at_its_deadline_finishes():
    runtime = FakeRuntime(delay=0.1)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=4)
        result = await batcher.submit(request(3), deadline=time.perf_counter() + 0.02)
        await batcher.close()
        return result

    np.testing.assert_array_equal(run(main())["y"], 3 * request(3)["x"] + 1)


def test_a_cancelled_request_leaves_the_queue_and_never_runs():
    runtime, log = FakeRuntime(delay=0.1), DropLog()
    executor = ThreadPoolExecutor(max_workers=2)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=2, max_concurrent_runs=1, executor=executor, observer=log)
        first = asyncio.create_task(batcher.submit(request(1, rows=2)))
        await asyncio.sleep(0.01)
        abandoned = asyncio.create_task(batcher.submit(request(2, rows=2)))
        await asyncio.sleep(0.01)
        assert batcher.queue.cost == 2
        abandoned.cancel()  # what the route does when the client disconnects
        with pytest.raises(asyncio.CancelledError):
            await abandoned
        assert batcher.queue.cost == 0
        await first
        await asyncio.sleep(0.05)
        await batcher.close()

    run(main())
    executor.shutdown()
    assert runtime.runs == [2] and log.drops == [(2, "cancelled")]


def test_a_request_is_admitted_whole_or_not_at_all():
    """Its chunks go into the queue together; when they do not fit, none stays behind."""
    runtime = FakeRuntime(delay=0.05)

    async def main():
        executor = ThreadPoolExecutor(1)
        batcher = Batcher(runtime, AXES, max_batch_rows=2, max_queue_rows=10, max_concurrent_runs=1, executor=executor)
        first = asyncio.create_task(batcher.submit(request(0, rows=6)))  # 3 chunks of 2 rows: 6 queued
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):
            await batcher.submit(request(1, rows=6))  # 6 more do not fit beside them: no chunk is queued
        queued_after_refusal = batcher.queue.cost
        result = await first
        await batcher.close()
        executor.shutdown()
        return result, queued_after_refusal

    result, queued = run(main())
    assert queued <= 6  # only the first request's rows (some may already run)
    assert sum(runtime.runs) == 6  # the refused request's rows never ran
    np.testing.assert_array_equal(result["y"], 3 * request(0, rows=6)["x"] + 1)


def test_a_request_that_can_never_fit_the_queue_is_too_large_not_busy():
    async def main():
        batcher = Batcher(FakeRuntime(), AXES, max_batch_rows=4, max_queue_rows=10)
        with pytest.raises(TooLarge, match="needs 12 rows; at most 10 rows queue"):
            await batcher.submit(request(0, rows=3), weight=4)
        assert batcher.queue.cost == 0
        await batcher.close()

    run(main())


def test_a_request_that_would_finish_after_its_deadline_is_refused_at_once_with_retry_after():
    runtime = FakeRuntime(delay=0.05)  # 50 ms per run of at most 2 rows

    async def main():
        executor = ThreadPoolExecutor(1)
        batcher = Batcher(runtime, AXES, max_batch_rows=2, max_concurrent_runs=1, executor=executor)
        batcher.throughput.observe(2, 0.05)  # what warm-up measures: 25 ms per row
        deadline = time.perf_counter() + 0.3  # room for about 6 runs
        tasks = [asyncio.create_task(batcher.submit(request(i, rows=2), deadline=deadline)) for i in range(20)]
        results = await asyncio.gather(*tasks, return_exceptions=True)
        finished = time.perf_counter()
        await batcher.close()
        executor.shutdown()
        return results, finished - deadline

    results, late_by = run(main())
    served = [r for r in results if isinstance(r, dict)]
    refused = [r for r in results if isinstance(r, TooLate)]
    assert len(served) + len(refused) == 20 and 3 <= len(served) <= 7  # nothing timed out in the queue
    assert not any(isinstance(r, DeadlineExceeded) for r in results)
    assert late_by < 0.1 and len(runtime.runs) == len(served)  # the refused rows never ran
    assert all(r.status == 503 and int(r.headers["Retry-After"]) >= 1 for r in refused)
    assert "after its deadline" in str(refused[0]) and "rows ahead" in str(refused[0])


def test_with_no_measured_cost_a_request_is_admitted_by_the_queue_limit_alone():
    runtime = FakeRuntime(delay=0.02)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=2, max_concurrent_runs=1)
        deadline = time.perf_counter() + 0.03
        results = await asyncio.gather(
            *(batcher.submit(request(i, rows=2), deadline=deadline) for i in range(6)), return_exceptions=True
        )
        await batcher.close()
        return results

    results = run(main())
    assert not any(isinstance(r, TooLate) for r in results)  # nothing known: admitted
    assert any(isinstance(r, DeadlineExceeded) for r in results)  # the deadline still drops what is queued at it


def test_a_full_queue_says_when_it_will_have_room():
    runtime = FakeRuntime(delay=0.05)

    async def main():
        batcher = Batcher(runtime, AXES, max_batch_rows=2, max_queue_rows=4, max_concurrent_runs=1)
        batcher.throughput.observe(2, 2.0)  # one second per row: the queue drains slowly
        results = await asyncio.gather(*(batcher.submit(request(i, rows=2)) for i in range(4)), return_exceptions=True)
        await batcher.close()
        return results

    full = [r for r in run(main()) if isinstance(r, QueueFull)]
    assert full and all(int(r.headers["Retry-After"]) >= 2 for r in full)
