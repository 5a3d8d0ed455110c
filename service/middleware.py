"""Pure ASGI middleware: the request's id, drain, metrics (in flight too) and access log; and the
body-size limit (413)."""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import time

from .answer import send_answer
from .errors import BodyTooLarge, ServiceUnavailable, render
from .lifecycle import GRACE_OVER, Lifecycle
from .logs import request_id
from .metrics import Metrics
from .tracing import describe_answer, server_span

REQUEST_ID = re.compile(r"^[A-Za-z0-9._:/+=-]{1,128}$")  # a client's X-Request-ID is echoed only if it looks like an id
ALWAYS_OPEN = ("/health/", "/v2/health/", "/metrics")  # answered while draining: probes and scrapes must see the drain
SPAN = "vae.span"  # the scope key of the request's OpenTelemetry span (tracing on)
access = logging.getLogger("service.access")
_ids = random.Random(int.from_bytes(os.urandom(16), "big"))  # request ids: unique, not secret; no syscall per request


def request_id_for(incoming: str) -> str:
    """The client's request id if it looks like one, else a new one (HTTP and gRPC alike)."""
    return incoming if REQUEST_ID.match(incoming) else f"{_ids.getrandbits(128):032x}"


class RequestMiddleware:
    """Per request: its id (the client's X-Request-ID or a new one, echoed, in every log line), the
    in-flight gauge, the drain (503 for new requests and ``Connection: close`` on every answer once
    draining), the metrics by route template, and the optional access log."""

    def __init__(self, app, metrics: Metrics, lifecycle: Lifecycle, access_log: bool = False):
        self.app, self.metrics, self.lifecycle, self.access_log = app, metrics, lifecycle, access_log

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        rid = request_id_for(dict(scope["headers"]).get(b"x-request-id", b"").decode("latin1"))
        span = scope.get(SPAN)  # the request's span when TracedRequestMiddleware runs in front
        if span is not None:
            span.set_attribute("vae.request_id", rid)
        token = request_id.set(rid)
        started, status, answering = time.perf_counter(), 500, False

        async def send_with_id(message):
            nonlocal status, answering
            if message["type"] == "http.response.start":
                status, answering = message["status"], True
                headers = [*message.get("headers", ()), (b"x-request-id", rid.encode())]
                if self.lifecycle.draining:  # no keep-alive past this answer: the client reconnects elsewhere
                    headers = [h for h in headers if h[0].lower() != b"connection"] + [(b"connection", b"close")]
                message["headers"] = headers
                if span is not None:
                    describe_answer(span, status, headers)
            await send(message)

        self.metrics.in_flight.inc()
        try:
            self.lifecycle.admit(probe=scope["path"].startswith(ALWAYS_OPEN))
        except ServiceUnavailable as refused:
            await _read_to_the_end(receive)  # a client still uploading reads the answer, not a reset
            await send_answer(send_with_id, render(scope["path"], refused))
        else:
            try:
                await self.app(scope, receive, send_with_id)
            except asyncio.CancelledError:
                if self.lifecycle.draining and not answering:  # cut off at the end of the grace: say so, not 500
                    cut_off = ServiceUnavailable(GRACE_OVER, headers={"Retry-After": "1"})
                    await send_answer(send_with_id, render(scope["path"], cut_off))
                raise
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "unmatched"  # templates only: bounded label values
            elapsed = time.perf_counter() - started
            self.metrics.count_request(endpoint, status, elapsed)
            if span is not None:
                span.update_name(f"{scope['method']} {endpoint}")
                span.set_attribute("http.route", endpoint)
            if self.access_log:
                access.info(
                    "%s %s %d",
                    scope["method"],
                    scope["path"],
                    status,
                    extra={
                        "fields": {
                            "method": scope["method"],
                            "path": scope["path"],
                            "status": status,
                            "duration_ms": round(elapsed * 1000, 3),
                        }
                    },
                )
            request_id.reset(token)


class TracedRequestMiddleware(RequestMiddleware):
    """``RequestMiddleware`` inside a server span that joins the caller's trace (tracing on); with
    tracing off the app has the plain class, and no request pays for this one."""

    def __init__(self, app, tracer, **options):
        super().__init__(app, **options)
        self.tracer = tracer

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        carrier = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope["headers"]}
        attributes = {"http.request.method": scope["method"], "url.path": scope["path"]}
        with server_span(self.tracer, scope["method"], carrier, attributes) as span:
            scope[SPAN] = span
            await super().__call__(scope, receive, send)


async def _read_to_the_end(receive) -> None:
    """Consume a request's body (or notice its client left) without keeping it."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect" or not message.get("more_body", False):
            return


class BodyLimitMiddleware:
    """413 for a body over ``max_bytes``: by Content-Length up front, or while it streams in.

    The body is read here and replayed to the app, because FastAPI turns any error raised while
    it reads a body into a 400; a limit enforced inside its read could never answer 413.
    """

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return  # the client left: nobody to answer
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._reject(scope, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, send):
        refused = BodyTooLarge(f"request body too large: the limit is {self.max_bytes} bytes (VAE_MAX_BODY_BYTES)")
        await send_answer(send, render(scope["path"], refused))
