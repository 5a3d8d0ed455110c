"""The rules every inference request meets, on REST and OIP alike: its API key, its deadline and
its size. Each raises a domain error (``errors``); the surface it came in on renders it.
"""

from __future__ import annotations

import hmac
import math
import time
from collections.abc import Mapping

from .errors import Forbidden, InvalidInput, TooLarge, Unauthorized
from .settings import Settings

TIMEOUT_HEADER = "x-timeout-ms"


def authorize(headers: Mapping[str, str], keys: list[str]) -> None:
    """Pass if no keys are configured or the request presents one (Bearer or X-API-Key).

    Every key is compared in constant time, and all of them are compared, so the answer's timing
    says nothing about how much of a key matched.
    """
    if not keys:
        return
    authorization = headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        presented = authorization[7:].strip()
    else:
        presented = headers.get("x-api-key", "")
    if not presented:
        raise Unauthorized("missing API key: send Authorization: Bearer <key> or X-API-Key: <key>")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), key.encode())
    if not matched:
        raise Unauthorized("invalid API key")


def authorize_admin(headers: Mapping[str, str], keys: list[str]) -> None:
    """The repository API: an admin key (Bearer or X-API-Key, as ``authorize``); with none configured it is off."""
    if not keys:
        raise Forbidden("the repository API is off: set VAE_ADMIN_KEYS to use it")
    authorize(headers, keys)


def header_timeout_s(headers: Mapping[str, str]) -> float | None:
    """The client's ``X-Timeout-Ms`` in seconds, or None when it sent none."""
    header = headers.get(TIMEOUT_HEADER)
    if header is None:
        return None
    try:
        timeout_s = float(header) / 1000
    except ValueError:
        timeout_s = math.nan
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        message = f"X-Timeout-Ms: {header!r} is not a positive number of milliseconds"
        raise InvalidInput(message, ("header", TIMEOUT_HEADER))
    return timeout_s


def deadline(settings: Settings, timeout_s: float | None, field: tuple = ("header", TIMEOUT_HEADER)) -> float:
    """A ``time.perf_counter()`` deadline: the client's timeout within the cap, or the default."""
    if timeout_s is None:
        return time.perf_counter() + settings.request_timeout_ms / 1000
    cap_ms = settings.max_request_timeout_ms
    if timeout_s * 1000 > cap_ms:
        raise TooLarge(f"timeout of {timeout_s * 1000:g} ms is over this server's cap of {cap_ms:g} ms", field)
    return time.perf_counter() + timeout_s


ROWS = {"inputs": "images", "latents": "latents", "n": "samples"}  # what a row of each field is


def check_size(
    settings: Settings, rows: int, samples: int = 0, where: str = "body", rows_field: str = "inputs"
) -> None:
    """Rows per request, samples (K) per input and K × rows: what one request may ask of the graphs."""
    limits = (
        (rows_field, rows, settings.max_request_rows, ROWS.get(rows_field, "rows")),
        ("samples", samples, settings.max_samples, "samples"),
        ("samples", samples * rows, settings.max_sample_rows, f"samples × {rows_field}"),
    )
    for field, value, limit, what in limits:
        if value > limit:
            raise TooLarge(f"{field}: {value} {what} is over this server's limit of {limit}", (where, field))
