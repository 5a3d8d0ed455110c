"""Sustained overload, open loop: requests arrive at a fixed rate whatever the answers do.

wrk is closed-loop (a connection waits for its answer before the next request), so it can never
push a server past what it serves. Here arrivals are scheduled at ``rate`` per second, each on its
own task, for ``duration_s``; the server must shed what it cannot serve (503) and keep serving
the rest. Goodput is the 200s per second, as a share of the capacity wrk measured.
"""

from __future__ import annotations

import asyncio
import logging
import time

import numpy as np

from .load import Server, wrk
from .rawhttp import Target, post_request, send
from .scenarios import Scenario

log = logging.getLogger(__name__)


async def _post(target: Target, at: float, timeout_s: float) -> tuple:
    """(status or error name, latency in s, Retry-After or None) of one request sent at ``at``."""
    await asyncio.sleep(max(0.0, at - time.perf_counter()))
    started = time.perf_counter()
    try:
        status, headers, _ = await send(target, timeout_s)
        return status, time.perf_counter() - started, headers.get("retry-after")
    except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
        return type(exc).__name__, time.perf_counter() - started, None


async def _arrivals(url: str, body: bytes, headers: dict, times: list[float], timeout_s: float) -> list:
    target = post_request(url, body, headers)
    start = time.perf_counter() + 0.1
    return await asyncio.gather(*(_post(target, start + t, timeout_s) for t in times))


def open_loop(url: str, body: bytes, headers: dict, rate: float, duration_s: float, timeout_s: float = 60) -> dict:
    """Counts by outcome, goodput and the latency percentiles of the 200s for one open-loop run."""
    times = [i / rate for i in range(int(rate * duration_s))]
    return {"rate": rate, "duration_s": duration_s, **_arrive(url, body, headers, times, timeout_s)}


def burst(url: str, body: bytes, headers: dict, clients: int, timeout_s: float = 60) -> dict:
    """``clients`` requests sent at once: what a server does with more than it can serve in a deadline."""
    return {"clients": clients, **_arrive(url, body, headers, [0.0] * clients, timeout_s)}


def _arrive(url: str, body: bytes, headers: dict, times: list[float], timeout_s: float) -> dict:
    """Requests sent at ``times`` (s from the start): counts by outcome, goodput, latencies."""
    started = time.perf_counter()
    outcomes = asyncio.run(_arrivals(url, body, headers, times, timeout_s))
    elapsed = time.perf_counter() - started
    ok = np.asarray([latency for status, latency, _ in outcomes if status == 200])
    counts: dict[str, int] = {}
    for status, _, _ in outcomes:
        counts[str(status)] = counts.get(str(status), 0) + 1
    shed = [latency for status, latency, _ in outcomes if status == 503]
    return {
        "elapsed_s": round(elapsed, 2),
        "requests": len(outcomes),
        "outcomes": counts,
        "goodput_rps": len(ok) / elapsed,
        "p50_ok_ms": float(np.percentile(ok, 50) * 1e3) if len(ok) else None,
        "p99_ok_ms": float(np.percentile(ok, 99) * 1e3) if len(ok) else None,
        "max_ok_ms": float(ok.max() * 1e3) if len(ok) else None,
        "p99_503_ms": float(np.percentile(shed, 99) * 1e3) if shed else None,
        "all_503_say_retry_after": all(r is not None for status, _, r in outcomes if status == 503),
        "errors_other_than_503": sum(n for status, n in counts.items() if status not in ("200", "503")),
    }


CAPACITY_CONNECTIONS = 16  # enough to keep a heavy scenario's graph busy, few enough for a small queue


def overload(
    server: Server, scenario: Scenario, factor: float, duration_s: float, deadline_ms: float, send_deadline: bool
) -> dict:
    """Capacity by wrk (closed loop, CAPACITY_CONNECTIONS), then an open-loop run at ``factor`` × capacity,
    each request with ``X-Timeout-Ms: deadline_ms`` when ``send_deadline`` (else the server's default).

    wrk's connections must fit the queue: past it they spin on instant 503s and take the CPU the
    model needs, which measures the spinning, not the capacity.
    """
    body, content_type, accept, path = scenario.request(True)
    wrk(server.url + path, body, content_type, accept, CAPACITY_CONNECTIONS, 2)  # warm-up
    server.wait_idle()
    measured = wrk(server.url + path, body, content_type, accept, CAPACITY_CONNECTIONS, duration_s)
    # 200s only: a small queue answers 503 at once, and those are not capacity
    capacity = (measured["requests"] - measured["errors"]) / (measured["duration_us"] / 1e6)
    server.wait_idle()
    headers = {"content-type": content_type, "accept": accept}
    if send_deadline:
        headers["x-timeout-ms"] = f"{deadline_ms:g}"
    run = open_loop(server.url + path, body, headers, factor * capacity, duration_s)
    result = {
        "scenario": scenario.name,
        "capacity_rps": capacity,
        "factor": factor,
        "deadline_ms": deadline_ms,
        **run,
        "goodput_share": run["goodput_rps"] / capacity,
    }
    log.info(
        "overload %s: capacity %.1f req/s, offered %.1f, goodput %.1f (%.0f %%), p99 of 200s %.0f ms, outcomes %s",
        scenario.name,
        capacity,
        run["rate"],
        run["goodput_rps"],
        100 * result["goodput_share"],
        run["p99_ok_ms"] or 0,
        run["outcomes"],
    )
    return result
