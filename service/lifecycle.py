"""A request's life beyond its handler: its client leaving, and the SIGTERM drain.

- ``run_or_abandon``: awaits the batcher, and cancels the queued work if the client disconnects
  (``receive`` is the request's ASGI channel),
  so an abandoned request never reaches onnxruntime.
- ``Lifecycle``: the draining flag the SIGTERM handler in ``__main__`` sets and ``RequestMiddleware``
  and readiness (``peers.not_ready``) read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import ClientGone

T = TypeVar("T")


@dataclass
class Lifecycle:
    draining: bool = False
    begin_drain: Callable[[], None] | None = None  # set by the server that runs the app: the SIGTERM drain
    calls_in_flight: int = 0  # gRPC calls being handled: the drain waits for them as for HTTP requests


async def _disconnected(receive) -> None:
    """Returns when the client goes away. The body was read already: what comes next is the disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


WATCH_AFTER_S = 0.005  # a request answered sooner costs no watcher task; one that waits longer gets one


async def run_or_abandon(receive, work: Awaitable[T]) -> T:
    """``work``'s result; if the client leaves first, ``work`` is cancelled (its queued rows are
    dropped) and ClientGone is raised. A watcher task starts once the request has waited
    ``WATCH_AFTER_S``: on a disconnect it cancels the task that awaits ``work``, so ``work`` itself
    needs no task of its own, and the many requests answered within a few milliseconds need no
    watcher at all."""
    current = asyncio.current_task()
    gone = False
    watcher: asyncio.Task | None = None

    def on_disconnect(task: asyncio.Task) -> None:
        nonlocal gone
        if not task.cancelled():
            gone = True
            current.cancel()

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.create_task(_disconnected(receive))
        watcher.add_done_callback(on_disconnect)

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            current.uncancel()
            raise ClientGone() from None
        raise
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.remove_done_callback(on_disconnect)
            watcher.cancel()
