"""A request's life beyond its handler: its client leaving, and the SIGTERM drain.

- ``run_or_abandon``: awaits the batcher, and cancels the queued work if the client disconnects,
  so an abandoned request never reaches onnxruntime.
- ``Lifecycle``: the draining flag the SIGTERM handler in ``__main__`` sets and ``RequestMiddleware``
  and readiness (``peers.not_ready``) read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from .errors import ClientGone, ServiceUnavailable

T = TypeVar("T")


SHUTTING_DOWN = "shutting down: retry on another replica"
GRACE_OVER = "shutting down: the grace period ran out"


@dataclass
class Lifecycle:
    draining: bool = False
    begin_drain: Callable[[], None] | None = None  # set by the server that runs the app: the SIGTERM drain
    calls_in_flight: int = 0  # gRPC calls being handled: the drain waits for them as for HTTP requests

    def admit(self, probe: bool) -> None:
        """While draining, only probes (health, metrics) are answered; every other request or call is
        refused with 503 and Retry-After, whichever transport it came on."""
        if self.draining and not probe:
            raise ServiceUnavailable(SHUTTING_DOWN, headers={"Retry-After": "1"})


async def _disconnected(receive) -> None:
    """Returns when the client goes away. The body was read already: what comes next is the disconnect."""
    while (await receive())["type"] != "http.disconnect":
        pass


WATCH_AFTER_S = 0.005  # a request answered sooner costs no watcher task; one that waits longer gets one
ON_DISCONNECT = "vae.on_disconnect"  # scope["extensions"] key: the server calls back when the client leaves


async def run_or_abandon(request, work: Awaitable[T]) -> T:
    """``work``'s result; if the client of ``request`` (its ASGI ``scope`` and ``receive``, as a
    ``hot.Call`` or a Starlette request has them) leaves first, ``work`` is cancelled (its queued rows are
    dropped) and ClientGone is raised, so ``work`` itself needs no task of its own.

    A server that says when its connection is lost (``ON_DISCONNECT``, as ``service.server``'s
    protocol does) costs a callback, no timer and no task. Under another ASGI server a watcher
    task reads ``receive`` once the request has waited ``WATCH_AFTER_S``: the many requests
    answered within a few milliseconds need none."""
    current = asyncio.current_task()
    gone = False

    def leave() -> None:
        nonlocal gone
        gone = True
        current.cancel()

    notify = request.scope.get("extensions", {}).get(ON_DISCONNECT)
    stop = notify(leave) if notify is not None else _watch(request.receive, leave)
    try:
        return await work
    except asyncio.CancelledError:
        if gone:
            current.uncancel()
            raise ClientGone() from None
        raise
    finally:
        stop()


def _watch(receive, leave: Callable[[], None]) -> Callable[[], None]:
    """A watcher task on ``receive`` from ``WATCH_AFTER_S`` on; returns what stops it."""
    watcher: asyncio.Task | None = None

    def on_disconnect(task: asyncio.Task) -> None:
        if not task.cancelled():
            leave()

    def watch() -> None:
        nonlocal watcher
        watcher = asyncio.create_task(_disconnected(receive))
        watcher.add_done_callback(on_disconnect)

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, watch)

    def stop() -> None:
        timer.cancel()
        if watcher is not None:
            watcher.remove_done_callback(on_disconnect)
            watcher.cancel()

    return stop
