"""POST /encode, /decode, /sample, /elbo: JSON in, arrays through the batchers, orjson out."""

from __future__ import annotations

import secrets

import numpy as np
from fastapi import APIRouter, HTTPException

from ..batcher import QueueFull
from ..deps import RegistryDep, SettingsDep, resolve_model
from ..runtime import ModelRuntime
from ..responses import NumpyJSONResponse, images_payload
from ..schemas import (
    DecodeRequest, ElboRequest, ElboResponse, EncodeRequest, EncodeResponse, ImagesResponse, SampleRequest,
    SampleResponse, check_limit, images_to_array, latents_to_array,
)

# Handlers return NumpyJSONResponse themselves: response_model documents the schema in OpenAPI,
# while the arrays go straight to orjson, never through pydantic.
router = APIRouter(tags=["inference"], default_response_class=NumpyJSONResponse)


def _rng(seed: int | None) -> tuple[int, np.random.Generator]:
    seed = secrets.randbits(63) if seed is None else seed
    return seed, np.random.default_rng(seed)


async def _guarded(awaitable):
    """A full queue sheds the request with 503 + Retry-After instead of queueing without bound."""
    try:
        return await awaitable
    except QueueFull as exc:
        raise HTTPException(503, f"server busy: {exc}", headers={"Retry-After": "1"}) from None


def _images_and_noise(body: EncodeRequest | ElboRequest, registry, settings) -> tuple[ModelRuntime, np.ndarray, np.ndarray]:
    """The limits (samples × inputs bounds memory), the model, x (B, 784) and ε (K, B, Z) from the seed."""
    check_limit("inputs", len(body.inputs), settings.max_request_rows, "images")
    check_limit("samples", body.samples, settings.max_samples, "samples")
    check_limit("samples", body.samples * len(body.inputs), settings.max_sample_rows, "samples × inputs")
    model = resolve_model(registry, body.model)
    x = images_to_array(body.inputs)
    _, rng = _rng(body.seed)
    eps = rng.standard_normal((body.samples, len(x), model.latent_dim), dtype=np.float32)
    return model, x, eps


@router.post("/encode", response_model=EncodeResponse, summary="q(z|x): posterior mean and log-variance (and samples)")
async def encode(body: EncodeRequest, registry: RegistryDep, settings: SettingsDep):
    model, x, eps = _images_and_noise(body, registry, settings)
    out = await _guarded(model.encode(x))
    result = {"model": model.name, "mean": out["mean"], "log_var": out["log_var"]}
    if body.samples:
        z = await _guarded(model.reparameterize(out["mean"], out["log_var"], eps))  # (K, B, Z)
        result["z"] = np.ascontiguousarray(z.transpose(1, 0, 2))  # (B, K, Z)
    return NumpyJSONResponse(result)


@router.post("/decode", response_model=ImagesResponse, summary="E[x|z]: the decoder's mean image for each latent")
async def decode(body: DecodeRequest, registry: RegistryDep, settings: SettingsDep):
    check_limit("latents", len(body.latents), settings.max_request_rows, "latents")
    model = resolve_model(registry, body.model)
    z = latents_to_array(body.latents, model.latent_dim)  # (B, Z)
    out = await _guarded(model.decode(z))
    return NumpyJSONResponse({"model": model.name, "images": images_payload(out["image"], body.format)})


@router.post("/sample", response_model=SampleResponse, summary="x ~ p(x): decode z ~ N(0, temperature² I)")
async def sample(body: SampleRequest, registry: RegistryDep, settings: SettingsDep):
    check_limit("n", body.n, settings.max_request_rows, "samples")
    model = resolve_model(registry, body.model)
    seed, rng = _rng(body.seed)
    z = rng.standard_normal((body.n, model.latent_dim), dtype=np.float32) * np.float32(body.temperature)  # (n, Z)
    out = await _guarded(model.decode(z))
    return NumpyJSONResponse({"model": model.name, "seed": seed, "latents": z,
                              "images": images_payload(out["image"], body.format)})


@router.post("/elbo", response_model=ElboResponse, summary="ELBO, its terms and the IWAE log p(x), per input, in nats")
async def elbo(body: ElboRequest, registry: RegistryDep, settings: SettingsDep):
    model, x, eps = _images_and_noise(body, registry, settings)
    out = await _guarded(model.score(x, eps))
    return NumpyJSONResponse({"model": model.name, **out, "gap": out["log_likelihood"] - out["elbo"]})
