"""A request's life beyond its handler: its deadline, its client leaving, and the SIGTERM drain.

- ``deadline_of``: the service's default deadline, or the client's ``X-Timeout-Ms`` within the cap.
- ``run_or_abandon``: awaits the batcher, and cancels the queued work if the client disconnects,
  so an abandoned request never reaches onnxruntime.
- ``Lifecycle``: the in-flight count and the draining flag that ``RequestMiddleware`` keeps and the
  SIGTERM handler in ``__main__`` waits on.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request

from .schemas import unprocessable
from .settings import Settings

T = TypeVar("T")
TIMEOUT_HEADER = "x-timeout-ms"


@dataclass
class Lifecycle:
    draining: bool = False
    in_flight: int = 0


def not_ready(request: Request) -> str | None:
    """Why this server should get no traffic now (the same answer for /health/ready and the OIP
    readiness routes), or None when it is ready."""
    state = request.app.state
    if state.lifecycle.draining:
        return "shutting down"
    if not state.registry.models:
        return "no models loaded"
    if not state.registry.ready:
        return "warming up"
    return None


class ClientGone(Exception):
    """The client disconnected while its request waited: nobody is left to answer (logged as 499)."""


def deadline_of(request: Request, settings: Settings) -> float:
    """A ``time.perf_counter()`` deadline: the client's ``X-Timeout-Ms`` (within the cap), or the default."""
    cap = settings.max_request_timeout_ms / 1000
    header = request.headers.get(TIMEOUT_HEADER)
    if header is None:
        return time.perf_counter() + settings.request_timeout_ms / 1000
    try:
        timeout_s = float(header) / 1000
    except ValueError:
        timeout_s = math.nan
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise unprocessable([TIMEOUT_HEADER], f"X-Timeout-Ms: {header!r} is not a positive number of milliseconds", "header")
    if timeout_s > cap:
        raise unprocessable([TIMEOUT_HEADER], f"timeout of {timeout_s * 1000:g} ms is over this server's cap of {cap * 1000:g} ms", "header")
    return time.perf_counter() + timeout_s


async def _disconnected(request: Request) -> None:
    """Returns when the client goes away. The body was read already: what comes next is the disconnect."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def run_or_abandon(request: Request, work: Awaitable[T]) -> T:
    """``work``'s result; if the client leaves first, ``work`` is cancelled (its queued rows are
    dropped) and ClientGone is raised. One watcher task per request: on a disconnect it cancels
    the task that awaits ``work``, so ``work`` itself needs no task of its own."""
    current = asyncio.current_task()
    gone = False

    def on_disconnect(watcher: asyncio.Task) -> None:
        nonlocal gone
        if not watcher.cancelled():
            gone = True
            current.cancel()

    watcher = asyncio.create_task(_disconnected(request))
    watcher.add_done_callback(on_disconnect)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            current.uncancel()
            raise ClientGone() from None
        raise
    finally:
        watcher.remove_done_callback(on_disconnect)
        watcher.cancel()
