"""The measured service rate that deadline admission reads, without a batcher."""

import pytest

from service.throughput import Throughput


def test_throughput_counts_busy_time_once_for_concurrent_runs_and_follows_a_slower_machine():
    rate = Throughput(decay=0.5)
    assert rate.seconds_per_row(0.0) is None and rate.seconds_to_serve(100, 0.0) is None  # no history: unknown
    first, second = rate.submitted(10), rate.submitted(10)
    first.began, second.began = 0.0, 0.5  # the second overlaps the first: 20 rows in 2 s of busy time
    first.ended, second.ended = 1.0, 2.0
    rate.finished(first)
    rate.finished(second)
    assert rate.seconds_per_row(2.0) == pytest.approx(0.1)
    assert rate.seconds_to_serve(30, 2.0) == pytest.approx(3.0)
    slow = rate.submitted(10)
    slow.began = 10.0  # already slower than 0.1 s per row: the estimate rises before it ends
    assert rate.seconds_per_row(13.0) == pytest.approx(0.3)
    assert rate.seconds_to_serve(10, 11.0) == pytest.approx(0.0)  # in flight, expected done by now
    queued = rate.submitted(10)  # handed to the executor, not begun: counted in full
    assert rate.seconds_to_serve(20, 10.5) == pytest.approx(0.5 + 10 * 0.1)
    slow.ended = 13.0
    rate.finished(slow)
    rate.finished(queued)  # never began: measures nothing
    assert rate.seconds_per_row(13.0) > 0.2  # the decayed history weighs the slow run most
    assert rate.in_flight_rows == 0


def test_a_run_is_timed_by_its_thread_not_by_a_late_event_loop():
    rate = Throughput(decay=0.5)
    run = rate.submitted(10)
    run.began, run.ended = 0.0, 0.1  # the loop notices it seconds later: that is not the run's cost
    rate.finished(run)
    assert rate.seconds_per_row(5.0) == pytest.approx(0.01)
