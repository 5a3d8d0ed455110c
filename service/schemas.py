"""Request and response bodies (the API contract) and the checks that turn JSON into arrays.

Every client mistake becomes a 422 whose ``detail`` names the field and what was expected,
in the same shape FastAPI uses for its own validation errors.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
from fastapi import HTTPException
from pydantic import BaseModel, ConfigDict, Field

IMAGE_SIDE = 28
IMAGE_SIZE = IMAGE_SIDE * IMAGE_SIDE
SEED_MAX = 2**63 - 1

Image = list[float] | list[list[float]]
_EXAMPLE_IMAGE = [0.0] * 300 + [1.0] * 184 + [0.0] * 300


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model: str | None = Field(None, description="model name (default: the configured default model)")


class _ImagesRequest(_Request):
    inputs: list[Image] = Field(..., min_length=1, description="images: 784 numbers or 28 rows of 28, in [0, 1]")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="seed for ε, the noise of z = μ + σ⊙ε")


class EncodeRequest(_ImagesRequest):
    samples: int = Field(0, ge=0, description="also draw this many z ~ q(z|x) per input")
    model_config = ConfigDict(json_schema_extra={"examples": [{"inputs": [_EXAMPLE_IMAGE], "samples": 2, "seed": 0}]})


class DecodeRequest(_Request):
    latents: list[list[float]] = Field(..., min_length=1, description="latent vectors of the model's latent_dim")
    format: Literal["array", "png"] = Field("array", description="28×28 nested floats, or base64 PNG strings")
    model_config = ConfigDict(json_schema_extra={"examples": [{"latents": [[0.0] * 32], "format": "png"}]})


class SampleRequest(_Request):
    n: int = Field(1, ge=1, description="how many samples from the prior")
    seed: int | None = Field(None, ge=0, le=SEED_MAX, description="same seed, bit-identical output; omitted: one is picked and returned")
    temperature: float = Field(1.0, gt=0, le=100, description="scales the prior's standard deviation")
    format: Literal["array", "png"] = "array"
    model_config = ConfigDict(json_schema_extra={"examples": [{"n": 4, "seed": 42, "temperature": 1.0}]})


class ElboRequest(_ImagesRequest):
    """Binarize inputs yourself for a Bernoulli model: the service scores the values it is given."""

    samples: int = Field(1, ge=1, description="K importance samples for log p(x) (K = 1: log_likelihood == elbo)")
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


def unprocessable(loc: list, message: str) -> HTTPException:
    """A 422 in FastAPI's own error shape, naming the field."""
    return HTTPException(status_code=422, detail=[{"loc": ["body", *loc], "msg": message, "type": "value_error"}])


def check_limit(field: str, value: int, limit: int, what: str) -> None:
    if value > limit:
        raise unprocessable([field], f"{field}: {value} {what} is over this server's limit of {limit}")


def images_to_array(images: list, field: str = "inputs") -> np.ndarray:
    """JSON images (784 numbers or 28 rows of 28, in [0, 1]) -> (N, 784) float32."""
    out = np.empty((len(images), IMAGE_SIZE), dtype=np.float32)
    for i, image in enumerate(images):
        try:
            array = np.asarray(image, dtype=np.float32)
        except ValueError:
            raise unprocessable([field, i], f"{field}[{i}]: rows of unequal length; expected 28 rows of 28 numbers") from None
        if array.shape not in ((IMAGE_SIZE,), (IMAGE_SIDE, IMAGE_SIDE)):
            raise unprocessable([field, i], f"{field}[{i}]: expected 784 numbers or 28 rows of 28, got shape {list(array.shape)}")
        out[i] = array.reshape(-1)
    check_values(out, field, low=0.0, high=1.0)
    return out


def latents_to_array(latents: list[list[float]], latent_dim: int, field: str = "latents") -> np.ndarray:
    bad = next((i for i, z in enumerate(latents) if len(z) != latent_dim), None)
    if bad is not None:
        raise unprocessable([field, bad], f"{field}[{bad}]: expected {latent_dim} numbers (the model's latent_dim), got {len(latents[bad])}")
    out = np.asarray(latents, dtype=np.float32)
    check_values(out, field)
    return out


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
