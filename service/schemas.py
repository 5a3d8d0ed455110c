"""Request and response bodies (the API contract) and the checks that turn JSON into arrays.

Every client mistake becomes a 422 whose ``detail`` names the field and what was expected,
in the same shape FastAPI uses for its own validation errors.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
from typing import Literal

import numpy as np
from fastapi import HTTPException
from PIL import Image as PILImage
from pydantic import BaseModel, ConfigDict, Field

IMAGE_SIDE = 28
IMAGE_SIZE = IMAGE_SIDE * IMAGE_SIDE
SEED_MAX = 2**63 - 1

Image = list[float] | list[list[float]] | str
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MAX_PNG_BASE64 = 64 * 1024  # a 28×28 grayscale PNG is well under 2 KB
IMAGES_DOC = "images: 784 numbers or 28 rows of 28 in [0, 1], or base64 28×28 PNGs (all of one kind)"
_EXAMPLE_IMAGE = [0.0] * 300 + [1.0] * 184 + [0.0] * 300


class _Options(BaseModel):
    """What a request says besides its array: a JSON body's other fields, or an NPY request's query."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str | None = Field(None, description="model name (default: the configured default model)")


class _ImageOptions(_Options):
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="seed for ε, the noise of z = μ + σ⊙ε")


class EncodeOptions(_ImageOptions):
    samples: int = Field(0, ge=0, description="also draw this many z ~ q(z|x) per input")


class EncodeRequest(EncodeOptions):
    inputs: list[Image] = Field(..., min_length=1, description=IMAGES_DOC)
    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": [_EXAMPLE_IMAGE], "samples": 2, "seed": 0}]})


class DecodeOptions(_Options):
    format: Literal["array", "png"] = Field("array", description="28×28 nested floats, or base64 PNG strings (JSON only)")


class DecodeRequest(DecodeOptions):
    latents: list[list[float]] = Field(..., min_length=1, description="latent vectors of the model's latent_dim")
    model_config = ConfigDict(json_schema_extra={"examples": [{"latents": [[0.0] * 32], "format": "png"}]})


class SampleRequest(_Options):
    n: int = Field(1, ge=1, description="how many samples from the prior")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="same seed, bit-identical output; omitted: one is picked and returned")
    temperature: float = Field(1.0, gt=0, le=100, description="scales the prior's standard deviation")
    format: Literal["array", "png"] = Field("array", description="28×28 nested floats, or base64 PNG strings (JSON only)")
    model_config = ConfigDict(json_schema_extra={"examples": [{"n": 4, "seed": 42, "temperature": 1.0}]})


class ElboOptions(_ImageOptions):
    """Binarize inputs yourself for a Bernoulli model: the service scores the values it is given."""

    samples: int = Field(1, ge=1, description="K importance samples for log p(x) (K = 1: log_likelihood == elbo)")


class ElboRequest(ElboOptions):
    inputs: list[Image] = Field(..., min_length=1, description=IMAGES_DOC)
    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": [_EXAMPLE_IMAGE], "samples": 100, "seed": 0}]})


class EncodeResponse(BaseModel):
    model: str
    mean: list[list[float]]
    log_var: list[list[float]]
    z: list[list[list[float]]] | None = Field(None, description="(inputs, samples, latent_dim), when samples ≥ 1")


class ImagesResponse(BaseModel):
    model: str
    images: list[list[list[float]]] | list[str] = Field(..., description="28×28 mean images E[x|z], or base64 PNGs")


class SampleResponse(ImagesResponse):
    seed: int
    latents: list[list[float]]


class ElboResponse(BaseModel):
    """Per input, in nats."""

    model: str
    elbo: list[float] = Field(..., description="reconstruction − kl: the evidence lower bound")
    reconstruction: list[float] = Field(..., description="E_q[log p(x|z)], averaged over the K samples")
    kl: list[float] = Field(..., description="KL(q(z|x) ‖ N(0, I)), closed form")
    log_likelihood: list[float] = Field(..., description="IWAE estimate of log p(x) with K samples")
    gap: list[float] = Field(..., description="log_likelihood − elbo ≥ 0: estimates KL(q(z|x) ‖ p(z|x))")


def unprocessable(loc: list, message: str, where: str = "body") -> HTTPException:
    """A 422 in FastAPI's own error shape, naming the field (``where``: body, query or header)."""
    return HTTPException(status_code=422, detail=[{"loc": [where, *loc], "msg": message, "type": "value_error"}])


def check_limit(field: str, value: int, limit: int, what: str) -> None:
    if value > limit:
        raise unprocessable([field], f"{field}: {value} {what} is over this server's limit of {limit}")


def json_array(value, field: str, item_shapes: tuple[tuple[int, ...], ...] = ()) -> np.ndarray:
    """A JSON list of rows -> float32 array, in one numpy call; on failure, name the first bad row.

    ``item_shapes``: shapes a row may take besides the common one (an image as 784 numbers or
    28 rows of 28); mixed rows of those shapes are flattened and stacked.
    """
    if not isinstance(value, list) or not value:
        raise unprocessable([field], f"{field}: expected a list with at least 1 row")
    try:
        with np.errstate(over="ignore"):  # 1e300 becomes inf, which check_values names
            return np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        pass
    rows = []
    for i, item in enumerate(value):
        try:
            with np.errstate(over="ignore"):
                rows.append(np.asarray(item, dtype=np.float32))
        except (ValueError, TypeError) as exc:
            problem = "rows of unequal length" if "inhomogeneous" in str(exc) else "not a valid number in it"
            raise unprocessable([field, i], f"{field}[{i}]: {problem}; expected a list of numbers or of equal-length rows") from None
    if item_shapes and all(r.shape in item_shapes for r in rows):
        return np.stack([r.reshape(-1) for r in rows])
    bad = next(i for i, r in enumerate(rows) if r.shape != rows[0].shape)
    raise unprocessable([field, bad], f"{field}[{bad}]: shape {list(rows[bad].shape)} differs from {field}[0]'s {list(rows[0].shape)}")


def png_images_to_array(items: list, field: str = "inputs") -> np.ndarray:
    """Base64 PNGs -> (N, 784) float32 in [0, 1]. Each is checked before it is decoded: its
    encoded size, the PNG signature, and a 28×28 size read from the IHDR header."""
    out = np.empty((len(items), IMAGE_SIZE), dtype=np.float32)
    for i, item in enumerate(items):
        def bad(message: str) -> HTTPException:
            return unprocessable([field, i], f"{field}[{i}]: {message}")

        if not isinstance(item, str):
            raise bad("expected a base64 PNG string like the other inputs")
        text = item.split(",", 1)[1] if item.startswith("data:") else item  # a data: URL is fine too
        if len(text) > MAX_PNG_BASE64:
            raise bad(f"{len(text)} base64 characters is over the {MAX_PNG_BASE64} allowed for a 28×28 PNG")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise bad("not valid base64") from None
        if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 33:
            raise bad("not a PNG image (no PNG signature and IHDR header)")
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if (width, height) != (IMAGE_SIDE, IMAGE_SIDE):
            raise bad(f"PNG is {width}×{height}; expected 28×28")
        try:
            with PILImage.open(io.BytesIO(data), formats=["PNG"]) as image:
                out[i] = np.asarray(image.convert("L"), dtype=np.float32).reshape(-1) / 255.0
        except (OSError, ValueError, SyntaxError):
            raise bad("the PNG data is corrupt") from None
    return out


def as_images(array: np.ndarray, field: str = "inputs") -> np.ndarray:
    """(N, 784) or (N, 28, 28) in [0, 1] -> (N, 784) float32."""
    if array.ndim < 2 or array.shape[1:] not in ((IMAGE_SIZE,), (IMAGE_SIDE, IMAGE_SIDE)):
        shape = list(array.shape[1:]) if array.ndim >= 2 else list(array.shape)
        raise unprocessable([field, 0], f"{field}[0]: expected 784 numbers or 28 rows of 28, got shape {shape}")
    if len(array) == 0:
        raise unprocessable([field], f"{field}: expected at least 1 image")
    out = array.reshape(len(array), IMAGE_SIZE)
    check_values(out, field, low=0.0, high=1.0)
    return out


def as_latents(array: np.ndarray, latent_dim: int, field: str = "latents") -> np.ndarray:
    """(N, latent_dim), finite -> float32."""
    if array.ndim != 2 or array.shape[1] != latent_dim:
        got = array.shape[1:] if array.ndim >= 2 else array.shape
        raise unprocessable([field, 0], f"{field}[0]: expected {latent_dim} numbers (the model's latent_dim), got shape {list(got)}")
    if len(array) == 0:
        raise unprocessable([field], f"{field}: expected at least 1 latent")
    check_values(array, field)
    return array


def check_values(array: np.ndarray, field: str, low: float = -math.inf, high: float = math.inf) -> None:
    """Non-finite values (and values outside [low, high]) are named by their first position."""
    finite = np.isfinite(array)
    if not finite.all():
        i = int(np.argwhere(~finite)[0][0])
        raise unprocessable([field, i], f"{field}[{i}]: contains a non-finite number (NaN or infinity)")
    outside = (array < low) | (array > high)
    if outside.any():
        i, j = (int(v) for v in np.argwhere(outside)[0])
        raise unprocessable([field, i], f"{field}[{i}]: value {float(array[i, j]):g} at position {j} is outside [{low:g}, {high:g}]")
