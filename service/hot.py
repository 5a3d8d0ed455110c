"""The hot inference routes as plain ASGI, in front of FastAPI.

``/encode``, ``/decode``, ``/sample``, ``/elbo``, ``/anomaly`` and OIP ``infer`` are matched here by
path and served with no Starlette routing, Request or Response objects, or exception middleware:
a handler reads a ``Call`` (the scope, the body, the app's state) and returns an ``Answer``, sent
as two raw ASGI messages. Every other path, and every other method on these paths, goes on to
FastAPI, which also documents the hot routes (``routes/inference.py`` registers each handler with
it once). The pure-ASGI middleware (request id, drain, metrics, CORS, body limit) wraps both.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from .answer import Answer, send_answer, to_response
from .errors import GONE, OIP_PREFIX, ClientGone, ServiceError, render, render_validation

log = logging.getLogger(__name__)

Handler = Callable[["Call"], Awaitable[Answer]]


class Call:
    """One request as a handler reads it, straight from the ASGI scope (headers and query parsed
    on first use); ``state`` is the app's (settings, registry, metrics)."""

    __slots__ = ("scope", "receive", "state", "params", "_headers", "_query")

    def __init__(self, scope: dict, receive, state, params: dict[str, str] | None = None):
        self.scope, self.receive, self.state, self.params = scope, receive, state, params or {}
        self._headers: dict[str, str] | None = None
        self._query: dict[str, str] | None = None

    @property
    def path(self) -> str:
        return self.scope["path"]

    @property
    def headers(self) -> dict[str, str]:
        """Lower-case names; the first of repeated headers, as Starlette's ``Headers.get``."""
        if self._headers is None:
            headers: dict[str, str] = {}
            for name, value in self.scope["headers"]:
                headers.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
            self._headers = headers
        return self._headers

    @property
    def query_params(self) -> dict[str, str]:
        if self._query is None:
            self._query = dict(parse_qsl(self.scope["query_string"].decode("latin-1"), keep_blank_values=True))
        return self._query

    async def body(self) -> bytes:
        chunks = []
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone()
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                # one message (the body limit's replay, or a small request) is used as it came
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)


@dataclass(frozen=True, slots=True)
class Template:
    """What the metrics label a request with (``scope["route"].path``, as Starlette's routes)."""

    path: str


OIP_MODELS = f"{OIP_PREFIX}/models/"
OIP_INFER = Template(f"{OIP_PREFIX}/models/{{name}}/infer")
OIP_VERSION_INFER = Template(f"{OIP_PREFIX}/models/{{name}}/versions/{{version}}/infer")


def oip_infer_params(path: str) -> tuple[Template, dict[str, str]] | None:
    """``/v2/models/m/infer`` or ``/v2/models/m/versions/v/infer``: the template and its parameters."""
    if not (path.startswith(OIP_MODELS) and path.endswith("/infer")):
        return None
    parts = path[len(OIP_MODELS) : -len("/infer")].split("/")
    if len(parts) == 1 and parts[0]:
        return OIP_INFER, {"name": parts[0]}
    if len(parts) == 3 and parts[0] and parts[1] == "versions" and parts[2]:
        return OIP_VERSION_INFER, {"name": parts[0], "version": parts[2]}
    return None


class HotRoutes:
    """POST on a hot path goes to its handler; anything else to ``app`` (FastAPI's own stack)."""

    def __init__(self, app, state, routes: dict[str, Handler], oip_infer: Handler):
        self.app, self.state, self.oip_infer = app, state, oip_infer
        self.routes = {path: (Template(path), handler) for path, handler in routes.items()}

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        path = scope["path"]
        if (route := self.routes.get(path)) is not None:
            (template, handler), params = route, None
        elif (found := oip_infer_params(path)) is not None:
            (template, params), handler = found, self.oip_infer
        else:
            return await self.app(scope, receive, send)
        scope["route"] = template
        await send_answer(send, await answer(handler, Call(scope, receive, self.state, params)))


async def answer(handler: Handler, call: Call) -> Answer:
    """The handler's answer, or its failure rendered for the surface it came in on (REST or OIP)."""
    try:
        return await handler(call)
    except ServiceError as exc:
        return render(call.path, exc)
    except RequestValidationError as exc:
        return render_validation(call.path, exc)
    except ClientGone:
        return GONE
    except Exception:
        log.exception("%s failed", call.path)
        return render(call.path, ServiceError("internal server error"))


async def respond(handler: Handler, request: Request) -> Response:
    """``handler`` behind a FastAPI endpoint: the same handler, should a request reach FastAPI."""
    call = Call(request.scope, request.receive, request.app.state, request.path_params)
    return to_response(await answer(handler, call))


def documented(router: APIRouter, routes: dict[str, Handler], path: str, **options):
    """Register a hot handler with FastAPI at ``path`` (POST), under its own name: its OpenAPI entry
    (``options`` as ``router.post`` takes them), and ``routes[path]`` for ``HotRoutes``."""

    def register(handler: Handler) -> Handler:
        async def endpoint(request: Request) -> Response:
            return await respond(handler, request)

        endpoint.__doc__ = handler.__doc__
        router.add_api_route(path, endpoint, methods=["POST"], name=handler.__name__, **options)
        routes[path] = handler
        return handler

    return register
