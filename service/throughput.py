"""A batcher's measured service rate, which deadline admission reads: seconds per row of cost."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(eq=False)
class RunTiming:
    """One run's rows, and when the executor thread began and ended it (None until it does)."""

    rows: int
    began: float | None = None
    ended: float | None = None


class Throughput:
    """A batcher's measured service rate: seconds per row of cost while it is busy.

    Runs are timed by the executor thread that runs them, not by the event loop, which under a
    burst is late to notice a finished run. Busy time is the union of the runs' intervals, so
    concurrent runs count as the throughput they give together. Sums decay by ``decay`` per
    finished run: the rate follows a machine that slows down or speeds up within a few runs. A run
    going for longer than the rate predicts raises the estimate at once, before it finishes.
    """

    def __init__(self, decay: float = 0.8):
        self.decay = decay
        self.busy_s = 0.0  # decayed busy seconds
        self.rows = 0.0  # decayed rows those seconds served
        self.last_end = 0.0  # the end of the busy time counted so far
        self.in_flight: list[RunTiming] = []

    @property
    def in_flight_rows(self) -> int:
        return sum(run.rows for run in self.in_flight)

    def observe(self, rows: int, seconds: float) -> None:
        """A measured run outside the loop (warm-up): ``rows`` served in ``seconds``."""
        self.busy_s = self.decay * self.busy_s + seconds
        self.rows = self.decay * self.rows + rows

    def submitted(self, rows: int) -> RunTiming:
        run = RunTiming(rows)
        self.in_flight.append(run)
        return run

    def finished(self, run: RunTiming) -> None:
        self.in_flight.remove(run)
        if run.began is None or run.ended is None:
            return  # it never ran (its executor was shut down): nothing measured
        self.observe(run.rows, max(0.0, run.ended - max(run.began, self.last_end)))
        self.last_end = max(self.last_end, run.ended)

    def seconds_per_row(self, now: float) -> float | None:
        """None until a run was measured: with no history a request is admitted by the queue limit alone."""
        if self.rows <= 0:
            return None
        rate = self.busy_s / self.rows
        for run in self.in_flight:
            if run.began is not None and run.ended is None:
                rate = max(rate, (now - run.began) / run.rows)  # this run is slower than thought
        return rate

    def seconds_to_serve(self, rows_ahead: int, now: float) -> float | None:
        """Expected seconds until ``rows_ahead`` rows of cost (queued and in flight) are served."""
        rate = self.seconds_per_row(now)
        if rate is None:
            return None
        in_flight_rows, done_s = 0, 0.0
        for run in self.in_flight:
            if run.ended is None:
                in_flight_rows += run.rows
                done_s += 0.0 if run.began is None else now - run.began
        in_flight_left = max(0.0, in_flight_rows * rate - done_s)
        return in_flight_left + (rows_ahead - self.in_flight_rows) * rate
