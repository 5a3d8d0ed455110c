"""422s for request validation, without echoing the input back.

FastAPI's default handler returns each error's ``input``: a whole batch of images for one bad
pixel, and NaN or infinity (from JSON like ``1e400``) that its renderer cannot serialize, which
turned a client's mistake into a 500.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response
from fastapi.exceptions import RequestValidationError

from .oip import OIPError
from .responses import NumpyJSONResponse


MAX_ERRORS = 10  # one bad image can fail 784 pixels in each branch of a union: the first few say it


async def validation_error(request: Request, exc: RequestValidationError) -> NumpyJSONResponse:
    everything = exc.errors()
    errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid"), "type": e.get("type", "value_error")}
              for e in everything[:MAX_ERRORS]]
    if len(everything) > MAX_ERRORS:
        errors.append({"loc": ["body"], "msg": f"and {len(everything) - MAX_ERRORS} more errors", "type": "too_many_errors"})
    return NumpyJSONResponse({"detail": errors}, status_code=422)


async def oip_error(request: Request, exc: OIPError) -> NumpyJSONResponse:
    """The Open Inference Protocol's error shape: ``{"error": "..."}`` with the protocol's status."""
    return NumpyJSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)


async def client_gone(request: Request, exc: Exception) -> Response:
    """The client left while its request was queued; its work was cancelled. 499 is what the
    metrics and the access log record: nobody receives it."""
    return Response(status_code=499)
