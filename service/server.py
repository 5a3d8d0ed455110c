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

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .app import create_app
from .logs import configure_logging
from .settings import Settings

log = logging.getLogger("service")

QUIET_S = 0.2  # the drain ends after this long with no request unanswered and no new connection


class DrainingProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, counting the requests begun on this connection and those answered."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.begun = self.answered = 0

    def on_message_begin(self) -> None:  # the first byte of a request has arrived
        self.begun += 1
        super().on_message_begin()

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
        app,
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
