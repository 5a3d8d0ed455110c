"""Domain errors, raised once where a rule is broken, and the two ways of answering them.

The core (rules, arrays, the registry, the batcher) raises a ``ServiceError`` and knows nothing
of HTTP surfaces. ``render`` answers it in the shape of the surface the request came in on:
REST's ``{"detail": ...}`` (FastAPI's own shape, a list of located errors for invalid input) or
the Open Inference Protocol's ``{"error": "..."}`` under ``/v2``.
"""

from __future__ import annotations

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response

from .answer import Answer, to_response

OIP_PREFIX = "/v2"
MAX_ERRORS = 10  # one bad image can fail every pixel in each branch of a union: the first few say it


class ServiceError(Exception):
    """A request the service will not (or cannot now) answer with a result.

    ``status`` is REST's; ``oip_status`` the protocol's where it differs (OIP says 400 for any
    malformed request). ``loc`` locates invalid input in FastAPI's terms: ("body", "inputs", 3).
    """

    status = 500
    oip_status: int | None = None
    kind = "error"

    def __init__(self, message: str, loc: tuple = (), headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message, self.loc, self.headers = message, tuple(loc), headers


class InvalidInput(ServiceError):
    """The request is malformed: a field, a header or the body names what is wrong."""

    status, oip_status, kind = 422, 400, "value_error"


class TooLarge(InvalidInput):
    """The request asks for more than this server's limits allow; it can never be admitted as sent."""

    kind = "too_large"


class BodyTooLarge(ServiceError):
    """The body is over VAE_MAX_BODY_BYTES: refused before it is read whole (OIP says 413 too)."""

    status = 413


class Unauthorized(ServiceError):
    status = 401

    def __init__(self, message: str):
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    status = 403


class Conflict(ServiceError):
    """The request is valid but the server's state or mode does not allow it now."""

    status = 409


class UnknownModel(ServiceError):
    status = 404


class ModelUnavailable(ServiceError):
    """The model exists but was refused at load (its files are broken): retrying will not help."""

    status = 503


class ServiceUnavailable(ServiceError):
    """Not ready for traffic now: warming up, or shutting down."""

    status = 503


class Busy(ServiceError):
    """The queue is full now: shed at once, the client may retry (here or on another replica)."""

    status = 503

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class DeadlinePassed(ServiceError):
    """The request was still queued at its deadline; it never reached onnxruntime."""

    status = 504


class UnsupportedMediaType(ServiceError):
    status = 415


class NotAcceptable(ServiceError):
    status = 406


class ClientGone(Exception):
    """The client disconnected while its request waited: nobody is left to answer (logged as 499)."""


def invalid(where: str, *loc, message: str) -> InvalidInput:
    """An InvalidInput located as FastAPI locates its own errors (``where``: body, query or header)."""
    return InvalidInput(message, (where, *loc))


def _json(body: dict, status: int, headers: dict[str, str] | None = None) -> Answer:
    return Answer(orjson.dumps(body), status, headers=headers)


def render(path: str, exc: ServiceError) -> Answer:
    """REST or OIP, by the path the request came in on."""
    if path.startswith(OIP_PREFIX):
        return _json({"error": exc.message}, exc.oip_status or exc.status, exc.headers)
    if exc.loc:
        return _json(
            {"detail": [{"loc": list(exc.loc), "msg": exc.message, "type": exc.kind}]}, exc.status, exc.headers
        )
    return _json({"detail": exc.message}, exc.status, exc.headers)


def render_validation(path: str, exc: RequestValidationError) -> Answer:
    """FastAPI's 422 without echoing the input back: a whole batch for one bad pixel, or NaN that
    JSON cannot carry."""
    everything = exc.errors()
    errors = [
        {"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid"), "type": e.get("type", "value_error")}
        for e in everything[:MAX_ERRORS]
    ]
    if len(everything) > MAX_ERRORS:
        more = len(everything) - MAX_ERRORS
        errors.append({"loc": ["body"], "msg": f"and {more} more errors", "type": "too_many_errors"})
    if path.startswith(OIP_PREFIX):
        return _json({"error": "; ".join(e["msg"] for e in errors)}, 400)
    return _json({"detail": errors}, 422)


GONE = Answer(b"", 499, media_type=None)  # what the metrics and the access log record: nobody receives it


# FastAPI's exception handlers, for the routes it serves itself
async def service_error(request: Request, exc: ServiceError) -> Response:
    return to_response(render(request.url.path, exc))


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    return to_response(render_validation(request.url.path, exc))


async def client_gone(request: Request, exc: ClientGone) -> Response:
    return to_response(GONE)
