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

import httpx
import numpy as np

from .load import Server, wrk
from .scenarios import Scenario

log = logging.getLogger(__name__)


async def _open_loop(url: str, body: bytes, headers: dict, rate: float, duration_s: float, timeout_s: float) -> list:
    """(status or error name, latency in s) for each of the ``rate × duration_s`` scheduled requests."""
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:

        async def one(at: float):
            await asyncio.sleep(max(0.0, at - time.perf_counter()))
            started = time.perf_counter()
            try:
                response = await client.post(url, content=body, headers=headers)
                return response.status_code, time.perf_counter() - started
            except httpx.HTTPError as exc:
                return type(exc).__name__, time.perf_counter() - started

        start = time.perf_counter() + 0.1
        count = int(rate * duration_s)
        return await asyncio.gather(*(one(start + i / rate) for i in range(count)))


def open_loop(url: str, body: bytes, headers: dict, rate: float, duration_s: float, timeout_s: float = 60) -> dict:
    """Counts by outcome, goodput and the latency percentiles of the 200s for one open-loop run."""
    started = time.perf_counter()
    outcomes = asyncio.run(_open_loop(url, body, headers, rate, duration_s, timeout_s))
    elapsed = time.perf_counter() - started
    ok = np.asarray([latency for status, latency in outcomes if status == 200])
    counts: dict[str, int] = {}
    for status, _ in outcomes:
        counts[str(status)] = counts.get(str(status), 0) + 1
    return {
        "rate": rate,
        "duration_s": duration_s,
        "elapsed_s": round(elapsed, 2),
        "requests": len(outcomes),
        "outcomes": counts,
        "goodput_rps": len(ok) / elapsed,
        "p50_ok_ms": float(np.percentile(ok, 50) * 1e3) if len(ok) else None,
        "p99_ok_ms": float(np.percentile(ok, 99) * 1e3) if len(ok) else None,
        "errors_other_than_503": sum(n for status, n in counts.items() if status not in ("200", "503")),
    }


CAPACITY_CONNECTIONS = 16  # enough to keep a heavy scenario's graph busy, few enough for a small queue


def overload(server: Server, scenario: Scenario, factor: float, duration_s: float, deadline_ms: float) -> dict:
    """Capacity by wrk (closed loop, CAPACITY_CONNECTIONS), then an open-loop run at ``factor`` × capacity.

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
