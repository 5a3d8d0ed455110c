"""A request's life beyond its handler: its client leaving, and the SIGTERM drain.

- ``run_or_abandon``: awaits the batcher, and cancels the queued work if the client disconnects,
  so an abandoned request never reaches onnxruntime.
- ``Lifecycle``: the draining flag the SIGTERM handler in ``__main__`` sets and ``RequestMiddleware``
  and readiness read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from fastapi import Request

from .errors import ClientGone

T = TypeVar("T")


@dataclass
class Lifecycle:
    draining: bool = False


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
