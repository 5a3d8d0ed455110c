"""Dynamic cross-request batching: queue requests, coalesce them into one ORT run of at most
``max_batch_rows`` rows, split the outputs back in order.

The loop is a few small functions (take, concatenate, pad, split) around one worker task, so
each is tested without HTTP or onnxruntime. The run itself happens in an executor thread: the
event loop never blocks on ORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Executor

import numpy as np

from .errors import Busy, DeadlinePassed, TooLarge
from .jobs import Job, Tensors
from .noise import Noise, draw
from .observers import BatchObserver, FanOut
from .throughput import RunTiming, Throughput

log = logging.getLogger(__name__)

RunFn = Callable[[Tensors], Tensors]


class QueueFull(Busy):
    """The queue cannot take this request's rows now: shed it at once (503 + Retry-After)."""


class TooLate(Busy):
    """The request's expected finish is after its deadline: shed at once (503 + Retry-After), not
    queued to time out."""


class DeadlineExceeded(DeadlinePassed):
    """The request was still queued at its deadline; its rows were dropped before reaching ORT (504)."""


DEADLINE_SOURCES = "X-Timeout-Ms, parameters.timeout or the gRPC deadline; default VAE_REQUEST_TIMEOUT_MS"
DEADLINE_MESSAGE = f"deadline passed while the request was queued ({DEADLINE_SOURCES})"


def signature_of(inputs: Tensors, batch_axes: dict[str, int]) -> tuple:
    """Every input's shape with the batch axis left out, plus its dtype (inputs come in the graph's order)."""
    parts = []
    for name, a in inputs.items():
        axis = batch_axes[name]
        parts.append((name, a.shape[:axis] + a.shape[axis + 1 :], a.dtype.char))
    return tuple(parts)


def take_batch(queue: deque[Job], max_cost: int, max_jobs: int | None = None) -> list[Job]:
    """The head job, then later jobs of the same signature, in order, while the cost (and count) fits.

    One pass over the queue; the jobs left behind keep their order.
    """
    head = queue.popleft()
    batch, kept, cost = [head], [], head.cost
    while queue:
        job = queue.popleft()
        fits = job.signature == head.signature and cost + job.cost <= max_cost
        if fits and (max_jobs is None or len(batch) < max_jobs):
            batch.append(job)
            cost += job.cost
        else:
            kept.append(job)
    queue.extend(kept)
    for job in batch:
        job.queued = False
    return batch


def concatenate(parts: list[Tensors], batch_axes: dict[str, int]) -> Tensors:
    """The parts' inputs joined along their batch axes; ``Noise`` inputs are drawn for all parts at once."""
    if len(parts) == 1 and not drawn_names(parts[0]):
        return parts[0]
    return {name: join([p[name] for p in parts], batch_axes[name]) for name in parts[0]}


def join(values: list, axis: int) -> np.ndarray:
    """Arrays and ``Noise`` pieces, in order, as one array: the noise drawn in one call."""
    noise = [v for v in values if isinstance(v, Noise)]
    if not noise:
        return np.concatenate(values, axis=axis)
    drawn = draw(noise)
    if len(noise) == len(values):
        return drawn
    cuts = np.cumsum([n.shape[axis] for n in noise])[:-1]
    pieces = iter(np.split(drawn, cuts, axis=axis))
    return np.concatenate([next(pieces) if isinstance(v, Noise) else v for v in values], axis=axis)


def drawn_names(inputs: Tensors) -> list[str]:
    """The inputs that are ``Noise``: drawn in the run, and answered beside its outputs."""
    return [name for name, value in inputs.items() if isinstance(value, Noise)]


def split(outputs: Tensors, sizes: Iterable[int], batch_axes: dict[str, int]) -> list[Tensors]:
    """Cut each output along its batch axis into consecutive pieces of ``sizes`` rows."""
    offsets = np.cumsum(list(sizes))[:-1]
    pieces = {name: np.split(value, offsets, axis=batch_axes.get(name, 0)) for name, value in outputs.items()}
    return [{name: pieces[name][i] for name in outputs} for i in range(len(offsets) + 1)]


def bucket_sizes(limit: int) -> list[int]:
    """Powers of two below ``limit``, then ``limit``: the shapes a padding batcher produces."""
    sizes, size = [], 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return sizes + [limit]


def chunks(inputs: Tensors, rows: int, chunk: int, batch_axes: dict[str, int]) -> list[Tensors]:
    """``inputs`` cut along their batch axes into pieces of at most ``chunk`` rows (views, no copies)."""
    if rows <= chunk:
        return [inputs]
    return [{n: take_rows(a, s, s + chunk, batch_axes[n]) for n, a in inputs.items()} for s in range(0, rows, chunk)]


def take_rows(value: np.ndarray, start: int, stop: int, axis: int) -> np.ndarray:
    """Rows ``start:stop`` along ``axis`` (a view, no copy)."""
    if isinstance(value, Noise):
        return value.take(start, stop)
    return value[(slice(None),) * axis + (slice(start, stop),)]


def pad_rows(inputs: Tensors, rows: int, target: int, batch_axes: dict[str, int]) -> Tensors:
    """Zero-pad every input along its batch axis from ``rows`` to ``target`` rows."""
    if target == rows:
        return inputs
    padded = {}
    for name, value in inputs.items():
        widths = [(0, 0)] * value.ndim
        widths[batch_axes[name]] = (0, target - rows)
        padded[name] = np.pad(value, widths)
    return padded


class JobQueue:
    """The jobs waiting for a run, and their total cost: what admission and the loop share."""

    def __init__(self) -> None:
        self.jobs: deque[Job] = deque()
        self.cost = 0

    def __len__(self) -> int:
        return len(self.jobs)

    def add(self, jobs: list[Job]) -> None:
        self.jobs.extend(jobs)
        self.cost += sum(j.cost for j in jobs)

    def take(self, max_cost: int, max_jobs: int | None) -> list[Job]:
        """The next batch (see ``take_batch``), without the jobs whose request is already answered."""
        jobs = take_batch(self.jobs, max_cost, max_jobs)
        self.cost -= sum(j.cost for j in jobs)
        return [j for j in jobs if not j.future.done()]

    def drop(self, job: Job) -> bool:
        """Remove a job that is still queued; False if a run has taken it already."""
        if not job.queued:
            return False
        job.queued = False
        self.jobs.remove(job)
        self.cost -= job.cost
        return True


def retry_after(seconds: float) -> int:
    """Whole seconds for a Retry-After header: at least 1."""
    return max(1, math.ceil(seconds))


class Batcher:
    """One per (model, graph). ``await submit(inputs)`` returns that request's slice of a batched run."""

    def __init__(
        self,
        run: RunFn,
        batch_axes: dict[str, int],
        max_batch_rows: int,
        max_delay_s: float = 0.0,
        max_queue_rows: int = 1 << 16,
        executor: Executor | None = None,
        pad_to_buckets: bool = False,
        coalesce: bool = True,
        max_concurrent_runs: int = 1,
        observer: BatchObserver | None = None,
        name: str = "batcher",
    ):
        self.run, self.batch_axes, self.max_batch_rows = run, batch_axes, max_batch_rows
        self.max_delay_s, self.max_queue_rows = max_delay_s, max_queue_rows
        self.executor, self.pad_to_buckets, self.name = executor, pad_to_buckets, name
        self.max_jobs = None if coalesce else 1  # coalesce=False: the no-batching baseline
        self.observer = observer if isinstance(observer, FanOut) else FanOut(*([observer] if observer else []))
        self.queue = JobQueue()
        self.throughput = Throughput()
        self._wake = asyncio.Event()
        self._worker: asyncio.Task | None = None
        self._expiry: asyncio.TimerHandle | None = None  # the queue's one deadline timer
        self._expiry_at = math.inf
        # Runs in flight at once: a second run lets a big batch use another core while the first
        # computes; batches still grow while every slot is busy.
        self.max_concurrent_runs = max_concurrent_runs
        self._slots: asyncio.Semaphore | None = None
        self._running: set[asyncio.Task] = set()

    @property
    def running(self) -> int:
        """Runs in flight now."""
        return len(self._running)

    def rows_of(self, inputs: Tensors) -> int:
        name = next(iter(inputs))
        return inputs[name].shape[self.batch_axes[name]]

    def chunk_rows(self, weight: int) -> int:
        return max(1, self.max_batch_rows // max(1, weight))

    def padded_rows(self, rows: int, weight: int = 1) -> int:
        """The bucket a batch of ``rows`` runs as: itself, or with padding the next bucket size."""
        if not self.pad_to_buckets:
            return rows
        return next(size for size in bucket_sizes(self.chunk_rows(weight)) if size >= rows)

    async def submit(self, inputs: Tensors, weight: int = 1, deadline: float | None = None) -> Tensors:
        """Queue ``inputs`` (each row costs ``weight``); requests above the batch limit run in chunks.

        ``deadline`` (a ``time.perf_counter()`` value, when the answer is due): a request expected to
        finish after it is refused at once (TooLate); one still queued at it is dropped and gets
        DeadlineExceeded. A run already going at the deadline is not interrupted: its answer is
        returned, late. Cancelling the awaiting task (a client that left) drops it too.
        """
        rows = self.rows_of(inputs)
        parts = chunks(inputs, rows, self.chunk_rows(weight), self.batch_axes)
        jobs = self._admit(parts, weight, deadline)
        if len(jobs) == 1:
            return await self._result(jobs[0])
        results = await asyncio.gather(*(self._result(job) for job in jobs))
        return concatenate(list(results), self.batch_axes)

    def _admit(self, parts: list[Tensors], weight: int, deadline: float | None = None) -> list[Job]:
        """Queue every chunk of one request, or none of them: TooLarge when they never could fit,
        QueueFull when they do not fit now, TooLate when they would finish after the deadline."""
        loop = asyncio.get_running_loop()
        jobs = []
        for part in parts:
            rows = self.rows_of(part)
            signature = signature_of(part, self.batch_axes)
            jobs.append(Job(part, rows, rows * weight, signature, loop.create_future(), deadline=deadline))
        cost = sum(j.cost for j in jobs)
        if cost > self.max_queue_rows:
            limit = f"at most {self.max_queue_rows} rows queue (VAE_MAX_QUEUE_ROWS)"
            raise TooLarge(f"{self.name}: this request needs {cost} rows; {limit}, so it could never be admitted")
        now = time.perf_counter()
        ahead = self.queue.cost + self.throughput.in_flight_rows
        if self.queue.cost + cost > self.max_queue_rows:
            drain_s = self.throughput.seconds_to_serve(ahead + cost - self.max_queue_rows, now) or 1.0
            self.observer.shed(cost, "queue_full")
            raise QueueFull(
                f"{self.name}: {self.queue.cost} rows queued (limit {self.max_queue_rows}); "
                f"retry in {retry_after(drain_s)} s",
                retry_after(drain_s),
            )
        finish_s = self.throughput.seconds_to_serve(ahead + cost, now)
        if deadline is not None and finish_s is not None and now + finish_s > deadline:
            late_s = now + finish_s - deadline  # by then the queue ahead has shrunk enough to make it
            self.observer.shed(cost, "late")
            raise TooLate(
                f"{self.name}: expected to finish in {finish_s * 1000:.0f} ms ({ahead} rows ahead), after its "
                f"deadline in {max(0.0, deadline - now) * 1000:.0f} ms ({DEADLINE_SOURCES}); "
                f"retry in {retry_after(late_s)} s, elsewhere, or with a longer deadline",
                retry_after(late_s),
            )
        self.queue.add(jobs)
        if deadline is not None and (self._expiry is None or deadline < self._expiry_at):
            self._arm_expiry(deadline)
        self.observer.admitted(jobs)
        self._wake.set()
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._work(), name=f"batcher:{self.name}")
        return jobs

    async def _result(self, job: Job) -> Tensors:
        """The job's slice of its run; dropped from the queue when its awaiting task is cancelled."""
        try:
            return await job.future
        except asyncio.CancelledError:
            self._drop(job, "cancelled")
            raise

    def _arm_expiry(self, at: float) -> None:
        """One timer for the queue, at its earliest deadline (not one per request)."""
        if self._expiry is not None:
            self._expiry.cancel()
        self._expiry_at = at
        self._expiry = asyncio.get_running_loop().call_later(max(0.0, at - time.perf_counter()), self._expire_due)

    def _expire_due(self) -> None:
        """At the earliest deadline: every job still queued past its own is dropped (a job already
        running is left to finish); the timer moves on to the next deadline in the queue."""
        self._expiry = None
        self._expire(time.perf_counter())
        upcoming = [j.deadline for j in self.queue.jobs if j.deadline is not None]
        if upcoming:
            self._arm_expiry(min(upcoming))
        else:
            self._expiry_at = math.inf

    def _expire(self, now: float) -> None:
        for job in [j for j in self.queue.jobs if j.deadline is not None and j.deadline <= now]:
            if self._drop(job, "deadline") and not job.future.done():
                job.future.set_exception(DeadlineExceeded(DEADLINE_MESSAGE))

    def _drop(self, job: Job, reason: str) -> bool:
        if not self.queue.drop(job):
            return False
        self.observer.queue_depth(self.queue.cost)
        self.observer.dropped(job.rows, reason)
        return True

    async def _work(self) -> None:
        """The loop: wait for jobs and a free run slot, let the batch fill, start its run."""
        self._slots = self._slots or asyncio.Semaphore(self.max_concurrent_runs)
        while True:
            if not self.queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            await self._slots.acquire()  # jobs keep queueing (and coalescing) while every slot is busy
            await self._wait_while_running()
            await self._wait_to_fill()
            if (now := time.perf_counter()) >= self._expiry_at:  # a batch never takes a job past its deadline
                self._expire(now)
            jobs = self.queue.take(self.max_batch_rows, self.max_jobs) if self.queue else []
            self.observer.queue_depth(self.queue.cost)
            if not jobs:  # every job was dropped meanwhile, or cancelled before its run
                self._slots.release()
                continue
            run = asyncio.create_task(self._run(jobs))
            self._running.add(run)
            run.add_done_callback(self._run_done)

    def _full(self) -> bool:
        """The queue holds a whole batch (or, with batching off, a job)."""
        return self.queue.cost >= self.max_batch_rows or (self.max_jobs is not None and len(self.queue) > 0)

    async def _wait_while_running(self) -> None:
        """A second run starts only for a whole batch: while a run is in flight, the next batch
        grows until that run ends or the batch is whole. Requests that arrive one at a time
        (gRPC calls, each its own turn of the loop) coalesce instead of running one by one."""
        while self._running and self.queue and not self._full():
            self._wake.clear()
            await self._wake.wait()

    def _run_done(self, run: asyncio.Task) -> None:
        self._wake.set()
        self._running.discard(run)
        self._slots.release()

    async def _wait_to_fill(self) -> None:
        """With a max delay: wait until the queue holds a full batch or the head has waited long enough."""
        if self.max_delay_s <= 0 or not self.queue:
            return
        deadline = self.queue.jobs[0].enqueued_at + self.max_delay_s
        while self.queue.cost < self.max_batch_rows and (remaining := deadline - time.perf_counter()) > 0:
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), remaining)
            except TimeoutError:
                break

    async def _run(self, jobs: list[Job]) -> None:
        """One ORT run in the executor over the jobs' rows (padded to a bucket), split back to them."""
        now = time.perf_counter()
        self.observer.queue_waits([now - job.enqueued_at for job in jobs])
        rows = sum(j.rows for j in jobs)
        cost = sum(j.cost for j in jobs)
        self.observer.batch(rows, len(jobs))
        started = time.perf_counter()
        timing = self.throughput.submitted(cost)
        drawn = {name for job in jobs for name in drawn_names(job.inputs)}
        try:
            outputs = await asyncio.get_running_loop().run_in_executor(
                self.executor, self._padded_run, jobs, rows, timing, drawn
            )
            pieces = split(outputs, [j.rows for j in jobs], self.batch_axes)
        except Exception as exc:  # the failure belongs to this run's requests only
            log.warning("%s: run of %d rows failed: %s", self.name, rows, exc)
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            self._report(jobs, rows, started, timing, ok=False)
            return
        finally:
            self.throughput.finished(timing)
        for job, piece in zip(jobs, pieces):
            if drawn and not drawn_names(job.inputs):  # it sent its own arrays: the graph's outputs alone
                piece = {name: value for name, value in piece.items() if name not in drawn}
            if not job.future.done():
                job.future.set_result(piece)
        self._report(jobs, rows, started, timing, ok=True)

    def _padded_run(self, jobs: list[Job], rows: int, timing: RunTiming, drawn: set[str]) -> Tensors:
        """Concatenate (drawing the noise), pad to the bucket, run, cut the padding off (in the
        executor thread, which times it). Drawn inputs come back beside the outputs: /sample answers
        with its latents."""
        timing.began = time.perf_counter()
        try:
            inputs = concatenate([j.inputs for j in jobs], self.batch_axes)
            target = self.padded_rows(rows, weight=jobs[0].cost // jobs[0].rows)
            outputs = self.run(pad_rows(inputs, rows, target, self.batch_axes))
            outputs = {**{name: inputs[name] for name in drawn}, **outputs} if drawn else outputs
        finally:
            timing.ended = time.perf_counter()
        if target == rows:
            return outputs
        return {n: take_rows(v, 0, rows, self.batch_axes.get(n, 0)) for n, v in outputs.items()}

    def _report(self, jobs: list[Job], rows: int, started: float, timing: RunTiming, ok: bool) -> None:
        now = time.perf_counter()
        self.observer.run_done(rows, now - started, [now - j.enqueued_at for j in jobs], ok)
        self.observer.ran(jobs, started, timing, ok)

    async def close(self) -> None:
        if self._expiry is not None:
            self._expiry.cancel()
        for task in [self._worker, *self._running]:
            if task is None:
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for job in self.queue.jobs:
            if not job.future.done():
                job.future.set_exception(RuntimeError(f"{self.name} closed"))
        self.queue = JobQueue()
