"""What watches the batchers: the hooks a batcher calls (``BatchObserver``) and ``FanOut``, which
calls several observers and keeps each one's failure its own.

Observers (Prometheus metrics, the OIP statistics, traces) report on requests; they never decide
one. An exception in a hook is logged once per observer and hook, counted in ``failures``, and the
batch goes on: the requests get their answers.
"""

from __future__ import annotations

import logging
from collections import Counter

from .jobs import Job
from .throughput import RunTiming

log = logging.getLogger(__name__)

HOOKS = ("admitted", "ran", "batch", "queue_depth", "queue_waits", "run_done", "dropped", "shed")


class BatchObserver:
    """Hooks for metrics and traces; the default does nothing. A batcher calls them per batch
    where it can (``queue_waits``: every job of a run at once), per request only at admission."""

    def admitted(self, jobs: list[Job]) -> None:
        """A request's jobs entered the queue (on the request's own task: its context is current)."""

    def ran(self, jobs: list[Job], started: float, timing: RunTiming, ok: bool) -> None:
        """After a run, with its jobs and its times (``time.perf_counter`` values)."""

    def batch(self, rows: int, jobs: int) -> None: ...

    def queue_depth(self, rows: int) -> None: ...

    def queue_wait(self, seconds: float) -> None: ...

    def queue_waits(self, seconds: list[float]) -> None:
        """How long each job of a run waited in the queue."""
        for s in seconds:
            self.queue_wait(s)

    def run_done(self, rows: int, compute_s: float, request_s: list[float], ok: bool) -> None:
        """After a run: its rows, its compute time and each request's time since it was queued."""

    def dropped(self, rows: int, reason: str) -> None:
        """A request left the queue without reaching ORT: "deadline" or "cancelled" (its client left)."""

    def shed(self, rows: int, reason: str) -> None:
        """A request refused at admission: "queue_full", or "late" (expected to finish after its deadline)."""


def _overrides(observer: BatchObserver, hook: str) -> bool:
    method = getattr(type(observer), hook)
    return method is not getattr(BatchObserver, hook) or (
        hook == "queue_waits" and type(observer).queue_wait is not BatchObserver.queue_wait
    )


class FanOut(BatchObserver):
    """Several observers as one, each hook calling only the observers that implement it, each
    observer's failure isolated (see the module's docstring)."""

    def __init__(self, *observers: BatchObserver):
        self.observers = observers
        self.failures: Counter[tuple[str, str]] = Counter()  # (observer, hook) -> exceptions caught
        self._callers = {hook: [o for o in observers if _overrides(o, hook)] for hook in HOOKS}

    def _call(self, hook: str, *args) -> None:
        for observer in self._callers[hook]:
            try:
                getattr(observer, hook)(*args)
            except Exception:
                key = (type(observer).__name__, hook)
                if not self.failures[key]:
                    log.exception("observer %s failed in %s; its later failures are counted, not logged", *key)
                self.failures[key] += 1

    def admitted(self, jobs: list[Job]) -> None:
        if self._callers["admitted"]:
            self._call("admitted", jobs)

    def ran(self, jobs: list[Job], started: float, timing: RunTiming, ok: bool) -> None:
        self._call("ran", jobs, started, timing, ok)

    def batch(self, rows: int, jobs: int) -> None:
        self._call("batch", rows, jobs)

    def queue_depth(self, rows: int) -> None:
        self._call("queue_depth", rows)

    def queue_waits(self, seconds: list[float]) -> None:
        self._call("queue_waits", seconds)

    def run_done(self, rows: int, compute_s: float, request_s: list[float], ok: bool) -> None:
        self._call("run_done", rows, compute_s, request_s, ok)

    def dropped(self, rows: int, reason: str) -> None:
        self._call("dropped", rows, reason)

    def shed(self, rows: int, reason: str) -> None:
        self._call("shed", rows, reason)
