"""POST /encode, /decode, /sample, /elbo: JSON or NPY in, arrays through the batchers, JSON/NPY/NPZ out."""

from __future__ import annotations

import random
import secrets

import numpy as np
from fastapi import APIRouter, HTTPException, Request

from ..batcher import DeadlineExceeded, QueueFull
from ..bodies import array_responses, read_request, request_doc
from ..codec import JSON, array_response, negotiate
from ..deps import require_api_key, resolve_model
from ..lifecycle import deadline_of, run_or_abandon
from ..responses import NumpyJSONResponse, images_payload
from ..schemas import (
    DecodeOptions, DecodeRequest, ElboOptions, ElboRequest, ElboResponse, EncodeOptions, EncodeRequest, EncodeResponse,
    ImagesResponse, SampleRequest, SampleResponse, as_images, as_latents, check_limit,
)

# Handlers read their bodies themselves (``bodies.read_request``) and return responses built from
# numpy arrays: response_model and openapi_extra document the contract, pydantic never sees the arrays.
router = APIRouter(tags=["inference"], default_response_class=NumpyJSONResponse)

NPY_IMAGES = "float32 images, shape (N, 784) or (N, 28, 28), values in [0, 1]; options in the query string"
NPY_LATENTS = "float32 latents, shape (N, latent_dim); options in the query string"


_seeds = random.Random(secrets.randbits(128))  # seeds for requests that give none: unpredictable enough, no syscall


def _rng(seed: int | None) -> tuple[int, np.random.Generator]:
    seed = _seeds.getrandbits(63) if seed is None else seed
    return seed, np.random.Generator(np.random.PCG64(seed))


async def _guarded(request: Request, work):
    """The batcher's answer, or: 503 + Retry-After when its queue is full (shed at once, never
    queued without bound), 504 when the request was still queued at its deadline, and nothing
    (its work cancelled) when the client has left."""
    try:
        return await run_or_abandon(request, work)
    except QueueFull as exc:
        raise HTTPException(503, f"server busy: {exc}", headers={"Retry-After": "1"}) from None
    except DeadlineExceeded:
        raise HTTPException(504, "deadline passed while the request was queued (X-Timeout-Ms, default VAE_REQUEST_TIMEOUT_MS)") from None


def _answer(kind: str, main: str, arrays: dict[str, np.ndarray], json_body: dict, headers: dict[str, str]):
    """The body the client's Accept asks for: JSON (default), the ``main`` array as NPY, or all as NPZ."""
    if kind == JSON:
        return NumpyJSONResponse(json_body)
    return array_response(kind, main, arrays, headers)


def _context(request: Request):
    """The API key check, then registry, settings, the negotiated answer type and the deadline, read
    directly: FastAPI's dependency injection cost about a tenth of /sample's time on the hot routes."""
    state = request.app.state
    require_api_key(request)
    return state.registry, state.settings, negotiate(request.headers.get("accept")), deadline_of(request, state.settings)


async def _images_and_noise(request: Request, options_model, settings, registry):
    """Options, the model, x (B, 784) and ε (K, B, Z) from the seed; samples × inputs bounds memory."""
    options, array = await read_request(request, options_model, "inputs")
    check_limit("inputs", len(array), settings.max_request_rows, "images")
    check_limit("samples", options.samples, settings.max_samples, "samples")
    check_limit("samples", options.samples * len(array), settings.max_sample_rows, "samples × inputs")
    model = resolve_model(registry, options.model)
    x = as_images(array)
    _, rng = _rng(options.seed)
    eps = rng.standard_normal((options.samples, len(x), model.latent_dim), dtype=np.float32)
    return options, model, x, eps


@router.post("/encode", response_model=EncodeResponse, summary="q(z|x): posterior mean and log-variance (and samples)",
             openapi_extra=request_doc(EncodeRequest, EncodeOptions, NPY_IMAGES),
             responses=array_responses("mean", "mean, log_var and z"))
async def encode(request: Request):
    registry, settings, kind, deadline = _context(request)
    options, model, x, eps = await _images_and_noise(request, EncodeOptions, settings, registry)
    out = await _guarded(request, model.encode(x, deadline))
    arrays = {"mean": out["mean"], "log_var": out["log_var"]}
    if options.samples:
        z = await _guarded(request, model.reparameterize(out["mean"], out["log_var"], eps, deadline))  # (K, B, Z)
        arrays["z"] = np.ascontiguousarray(z.transpose(1, 0, 2))  # (B, K, Z)
    return _answer(kind, "mean", arrays, {"model": model.name, **arrays}, {"X-Model": model.name})


@router.post("/decode", response_model=ImagesResponse, summary="E[x|z]: the decoder's mean image for each latent",
             openapi_extra=request_doc(DecodeRequest, DecodeOptions, NPY_LATENTS),
             responses=array_responses("images", "images"))
async def decode(request: Request):
    registry, settings, kind, deadline = _context(request)
    options, array = await read_request(request, DecodeOptions, "latents")
    check_limit("latents", len(array), settings.max_request_rows, "latents")
    model = resolve_model(registry, options.model)
    z = as_latents(array, model.latent_dim)  # (B, Z)
    out = await _guarded(request, model.decode(z, deadline))
    images = out["image"].reshape(-1, 28, 28)
    return _answer(kind, "images", {"images": images},
                   {"model": model.name, "images": images_payload(images, options.format)}, {"X-Model": model.name})


@router.post("/sample", response_model=SampleResponse, summary="x ~ p(x): decode z ~ N(0, temperature² I)",
             openapi_extra=request_doc(SampleRequest), responses=array_responses("images", "images and latents"))
async def sample(request: Request):
    registry, settings, kind, deadline = _context(request)
    options, _ = await read_request(request, SampleRequest)
    check_limit("n", options.n, settings.max_request_rows, "samples")
    model = resolve_model(registry, options.model)
    seed, rng = _rng(options.seed)
    z = rng.standard_normal((options.n, model.latent_dim), dtype=np.float32) * np.float32(options.temperature)  # (n, Z)
    out = await _guarded(request, model.decode(z, deadline))
    images = out["image"].reshape(-1, 28, 28)
    return _answer(kind, "images", {"images": images, "latents": z},
                   {"model": model.name, "seed": seed, "latents": z, "images": images_payload(images, options.format)},
                   {"X-Model": model.name, "X-Seed": str(seed)})


@router.post("/elbo", response_model=ElboResponse, summary="ELBO, its terms and the IWAE log p(x), per input, in nats",
             openapi_extra=request_doc(ElboRequest, ElboOptions, NPY_IMAGES),
             responses=array_responses("log_likelihood", "elbo, reconstruction, kl, log_likelihood and gap"))
async def elbo(request: Request):
    registry, settings, kind, deadline = _context(request)
    _, model, x, eps = await _images_and_noise(request, ElboOptions, settings, registry)
    out = await _guarded(request, model.score(x, eps, deadline))
    arrays = {**out, "gap": out["log_likelihood"] - out["elbo"]}
    return _answer(kind, "log_likelihood", arrays, {"model": model.name, **arrays}, {"X-Model": model.name})
