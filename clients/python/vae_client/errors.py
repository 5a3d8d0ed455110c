"""Typed errors: what a status code means to a caller, with the server's words."""

from __future__ import annotations

import httpx


class VaeError(Exception):
    """Any error answer (``status``) or failure to get one (``status`` 0); ``detail`` is the server's."""

    def __init__(self, status: int, detail, message: str | None = None):
        super().__init__(message or f"{status}: {detail}")
        self.status, self.detail = status, detail


class Unauthorized(VaeError):
    """401: a missing or wrong API key."""


class NotFound(VaeError):
    """404: an unknown (or unloaded) model."""


class Invalid(VaeError):
    """422: the request is malformed; ``fields`` maps each field named (``inputs``, ``samples``, or
    ``body`` for the body as a whole) to the server's first message about it."""

    @property
    def fields(self) -> dict[str, str]:
        if not isinstance(self.detail, list):
            return {"body": str(self.detail)}
        found: dict[str, str] = {}
        for error in self.detail:
            loc = error.get("loc", [])
            found.setdefault(str(loc[1]) if len(loc) > 1 else "body", error.get("msg", ""))
        return found


class Busy(VaeError):
    """503 after every retry: the server sheds load (or is shutting down, or the model is unavailable)."""


class Timeout(VaeError):
    """504 (still queued at the deadline), or no answer within the client's timeout."""


BY_STATUS = {401: Unauthorized, 404: NotFound, 422: Invalid, 503: Busy, 504: Timeout}


def from_response(response: httpx.Response) -> VaeError:
    try:
        body = response.json()
        detail = body.get("detail", body.get("error", body)) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text
    kind = BY_STATUS.get(response.status_code, VaeError)
    return kind(response.status_code, detail, f"{response.status_code} {response.reason_phrase}: {detail}")
