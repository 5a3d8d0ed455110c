"""One server process: the app on uvicorn, with the SIGTERM drain.

The drain answers every request it received. From SIGTERM on, readiness is 503 and new requests
get 503 with Retry-After and ``Connection: close`` (``RequestMiddleware``), new gRPC calls
UNAVAILABLE; requests and calls admitted before it finish. The listening sockets stay open
meanwhile, so a client that connects during the grace period gets that 503 instead of a reset.
The process exits once no connection holds a request without its answer (a request whose first
bytes arrived counts, even before its headers are complete) and no gRPC call is in flight, or
when ``VAE_SHUTDOWN_GRACE_S`` runs out; then it logs how many were cut off.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Callable

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .app import create_app
from .lifecycle import ON_DISCONNECT
from .logs import configure_logging
from .settings import Settings

log = logging.getLogger("service")

QUIET_S = 0.2  # the drain ends after this long with no request unanswered and no new connection


class OneWrite:
    """A connection's transport that gathers what is written in one turn of the event loop and
    writes it at the end of that turn: a response's head and body leave in one write (one syscall),
    not two. Anything else (flow control, close, the peer's address) is the transport's own."""

    __slots__ = ("transport", "loop", "held", "held_bytes")
    LARGE = 1 << 16  # a body this large is written as it comes (after what is held): no copy to join it

    def __init__(self, transport: asyncio.Transport):
        self.transport, self.loop = transport, asyncio.get_running_loop()
        self.held: list[bytes] = []
        self.held_bytes = 0

    def write(self, data: bytes) -> None:
        if len(data) >= self.LARGE:
            self.flush()
            return self.transport.write(data)
        if not self.held:
            self.loop.call_soon(self.flush)
        self.held.append(data)
        self.held_bytes += len(data)
        if self.held_bytes >= self.LARGE:
            self.flush()

    def flush(self) -> None:
        if self.held:
            data = self.held[0] if len(self.held) == 1 else b"".join(self.held)
            self.held.clear()
            self.held_bytes = 0
            if not self.transport.is_closing():
                self.transport.write(data)

    def close(self) -> None:
        self.flush()
        self.transport.close()

    def __getattr__(self, name):
        return getattr(self.transport, name)


class DrainingProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, counting the requests begun on this connection and those answered;
    it writes each response once (``OneWrite``) and tells the request when its client leaves
    (``ON_DISCONNECT``: no task per request watches for it)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.begun = self.answered = 0
        self.on_lost: Callable[[], None] | None = None
        self.notify_bound = self.notify

    def connection_made(self, transport: asyncio.Transport) -> None:
        super().connection_made(OneWrite(transport))

    def on_message_begin(self) -> None:  # the first byte of a request has arrived
        self.begun += 1
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.cycle.scope["extensions"] = {ON_DISCONNECT: self.notify_bound}

    def notify(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` if the connection is lost before the answer; returns what cancels it."""
        self.on_lost = callback
        return self.forget

    def forget(self) -> None:
        self.on_lost = None

    def connection_lost(self, exc: Exception | None) -> None:
        lost, self.on_lost = self.on_lost, None
        super().connection_lost(exc)
        if lost is not None:
            lost()

    def on_response_complete(self) -> None:
        self.answered += 1
        super().on_response_complete()

    @property
    def unanswered(self) -> bool:
        return self.begun > self.answered

    def shutdown(self) -> None:
        """At exit: close idle connections; one still receiving a request keeps it and answers it."""
        if self.unanswered and self.cycle is None:
            return  # its request is still arriving: the app answers it, with Connection: close
        super().shutdown()


class Front:
    """The app as uvicorn calls it: a request goes straight to the app's middleware stack (which
    ``create_app`` set), as Starlette's own ``__call__`` sends it after setting ``scope["app"]``,
    without FastAPI's per-request telemetry check; the lifespan goes to the app."""

    def __init__(self, app):
        self.app, self.stack = app, app.middleware_stack

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        scope["app"] = self.app
        await self.stack(scope, receive, send)


class DrainingServer(uvicorn.Server):
    """SIGTERM drains (see the module's docstring); a second signal, or SIGINT, stops at once."""

    def __init__(self, config: uvicorn.Config, lifecycle, grace_s: float):
        super().__init__(config)
        self.lifecycle, self.grace_s = lifecycle, grace_s
        self._drain: asyncio.Task | None = None
        lifecycle.begin_drain = lambda: self.handle_exit(signal.SIGTERM, None)  # a supervisor's drain call

    def handle_exit(self, sig: int, frame) -> None:
        if sig != signal.SIGTERM or self.lifecycle.draining:
            return super().handle_exit(sig, frame)
        self.lifecycle.draining = True
        log.info("SIGTERM: draining %d connections (grace %.0f s)", len(self.server_state.connections), self.grace_s)
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: setattr(self, "_drain", loop.create_task(self.drain())))

    def unanswered(self) -> int:
        """HTTP connections holding a request without its answer, and gRPC calls in flight."""
        return self.unanswered_connections() + self.lifecycle.calls_in_flight

    def unanswered_connections(self) -> int:
        return sum(1 for c in self.server_state.connections if getattr(c, "unanswered", False))

    async def drain(self) -> None:
        """Wait until every received request is answered (and nothing new arrives for QUIET_S), then exit."""
        deadline = time.monotonic() + self.grace_s
        quiet_since, seen = None, self.server_state.total_requests
        while time.monotonic() < deadline:
            busy = self.unanswered() > 0 or self.server_state.total_requests != seen
            seen = self.server_state.total_requests
            if busy:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since >= QUIET_S:
                break
            await asyncio.sleep(0.01)
        if self.unanswered():
            calls = self.lifecycle.calls_in_flight
            log.warning("grace of %.0f s over: %d connections cut off with requests unanswered%s", self.grace_s,
                        self.unanswered_connections(), f", {calls} gRPC calls" if calls else "")  # fmt: skip
        else:
            log.info("drained: every request received was answered; shutting down")
        self.should_exit = True


def serve(settings: Settings, sockets=None, peers=None) -> None:
    """One process: the app on uvicorn with the drain, bound to the settings' port or given ``sockets``."""
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings, peers, grpc=True)
    config = uvicorn.Config(
        Front(app),
        host=settings.host,
        port=settings.port,
        http=DrainingProtocol,
        log_level=settings.log_level.lower(),
        access_log=False,
        proxy_headers=False,  # nothing reads the client's address: no X-Forwarded-For layer on every request
        log_config=None,  # our JSON handler, not uvicorn's
        timeout_graceful_shutdown=0.5,  # after the drain: idle connections close, what is left is cut off
    )
    DrainingServer(config, app.state.lifecycle, settings.shutdown_grace_s).run(sockets=sockets)
