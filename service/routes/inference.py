"""POST /encode, /decode, /sample, /elbo: JSON or NPY in, arrays through the batchers, JSON/NPY/NPZ out.

Each handler reads top to bottom: the rules that need no body (API key, deadline), the body
(``arrays``), the model and the size rules, the model's graphs (``runtime``), the answer
(``arrays``). Any failure is a domain error, rendered by ``errors``.
"""

from __future__ import annotations

import random
import secrets

import numpy as np
from fastapi import APIRouter, Request

from .. import arrays, rules
from ..lifecycle import run_or_abandon
from ..schemas import (
    AnomalyOptions,
    AnomalyRequest,
    AnomalyResponse,
    DecodeOptions,
    DecodeRequest,
    ElboOptions,
    ElboRequest,
    ElboResponse,
    EncodeOptions,
    EncodeRequest,
    EncodeResponse,
    ImagesResponse,
    SampleRequest,
    SampleResponse,
)
from .openapi import array_responses, request_doc

# Handlers read their bodies themselves and answer from numpy arrays: response_model and
# openapi_extra document the contract, pydantic never sees the arrays. No FastAPI dependencies:
# their solver costs about a tenth of /sample's time on the hot routes.
router = APIRouter(tags=["inference"], default_response_class=arrays.NumpyJSONResponse)

NPY_IMAGES = (
    "float32 images (N, H, W), (N, H, W, C) or (N, H·W·C) of the model's image_shape, in [0, 1]; options in the query"
)
NPY_LATENTS = "float32 latents, shape (N, latent_dim); options in the query string"

_seeds = random.Random(secrets.randbits(128))  # seeds for requests that give none: unpredictable enough, no syscall


def _rng(seed: int | None) -> tuple[int, np.random.Generator]:
    seed = _seeds.getrandbits(63) if seed is None else seed
    return seed, np.random.Generator(np.random.PCG64(seed))


def _headers(model) -> dict[str, str]:
    """Which model and version answered: a request runs on one version from start to end."""
    return {"X-Model": model.name, "X-Model-Version": model.version}


def _admit(request: Request) -> tuple[float, str]:
    """What needs no body: the API key, the deadline (a perf_counter value) and the answer's media type."""
    settings = request.app.state.settings
    rules.authorize(request, settings.api_key_list)
    return rules.deadline(settings, rules.header_timeout_s(request)), arrays.negotiate(request.headers.get("accept"))


async def _images_request(request: Request, options_model):
    """Options, the model, x (B, H·W·C) and ε (K, B, Z) drawn from the seed."""
    options, array = await arrays.read_request(request, options_model, "inputs")
    model = request.app.state.registry.resolve(options.model)
    rules.check_size(request.app.state.settings, len(array), options.samples)
    x = arrays.images(array, model.image_shape)
    _, rng = _rng(options.seed)
    eps = rng.standard_normal((options.samples, len(x), model.latent_dim), dtype=np.float32)  # (K, B, Z)
    return options, model, x, eps


@router.post(
    "/encode",
    response_model=EncodeResponse,
    summary="q(z|x): posterior mean and log-variance (and samples)",
    openapi_extra=request_doc(EncodeRequest, EncodeOptions, NPY_IMAGES),
    responses=array_responses("mean", "mean, log_var and z"),
)
async def encode(request: Request):
    deadline, kind = _admit(request)
    _, model, x, eps = await _images_request(request, EncodeOptions)
    out = await run_or_abandon(request, model.encode(x, eps, deadline))
    return arrays.answer(kind, "mean", out, {"model": model.name, **out}, _headers(model))


@router.post(
    "/decode",
    response_model=ImagesResponse,
    summary="E[x|z]: the decoder's mean image for each latent",
    openapi_extra=request_doc(DecodeRequest, DecodeOptions, NPY_LATENTS),
    responses=array_responses("images", "images"),
)
async def decode(request: Request):
    deadline, kind = _admit(request)
    options, array = await arrays.read_request(request, DecodeOptions, "latents")
    model = request.app.state.registry.resolve(options.model)
    rules.check_size(request.app.state.settings, len(array), rows_field="latents")
    z = arrays.latents(array, model.latent_dim)  # (B, Z)
    out = await run_or_abandon(request, model.decode(z, deadline))
    images = arrays.as_image_grid(out["image"], model.image_shape)
    body = {"model": model.name, "images": arrays.images_payload(images, options.format)}
    return arrays.answer(kind, "images", {"images": images}, body, _headers(model))


@router.post(
    "/sample",
    response_model=SampleResponse,
    summary="x ~ p(x): decode z ~ N(0, temperature² I)",
    openapi_extra=request_doc(SampleRequest),
    responses=array_responses("images", "images and latents"),
)
async def sample(request: Request):
    deadline, kind = _admit(request)
    options, _ = await arrays.read_request(request, SampleRequest)
    model = request.app.state.registry.resolve(options.model)
    rules.check_size(request.app.state.settings, options.n, rows_field="n")
    seed, rng = _rng(options.seed)
    z = rng.standard_normal((options.n, model.latent_dim), dtype=np.float32) * np.float32(options.temperature)  # (n, Z)
    out = await run_or_abandon(request, model.decode(z, deadline))
    images = arrays.as_image_grid(out["image"], model.image_shape)
    body = {"model": model.name, "seed": seed, "latents": z, "images": arrays.images_payload(images, options.format)}
    headers = {**_headers(model), "X-Seed": str(seed)}
    return arrays.answer(kind, "images", {"images": images, "latents": z}, body, headers)


@router.post(
    "/elbo",
    response_model=ElboResponse,
    summary="ELBO, its terms and the IWAE log p(x), per input, in nats",
    openapi_extra=request_doc(ElboRequest, ElboOptions, NPY_IMAGES),
    responses=array_responses("log_likelihood", "elbo, reconstruction, kl, log_likelihood and gap"),
)
async def elbo(request: Request):
    deadline, kind = _admit(request)
    _, model, x, eps = await _images_request(request, ElboOptions)
    out = await run_or_abandon(request, model.score(x, eps, deadline))
    return arrays.answer(kind, "log_likelihood", out, {"model": model.name, **out}, _headers(model))


@router.post(
    "/anomaly",
    response_model=AnomalyResponse,
    summary="calibrated out-of-distribution score, its percentile and the outlier flag, per input",
    openapi_extra=request_doc(AnomalyRequest, AnomalyOptions, NPY_IMAGES),
    responses=array_responses("score", "score, percentile, outlier, log_likelihood, statistic_* and maps"),
)
async def anomaly(request: Request):
    deadline, kind = _admit(request)
    options, model, x, eps = await _images_request(request, AnomalyOptions)
    out = await run_or_abandon(request, model.anomaly(x, eps, options.threshold, options.maps, deadline))
    statistics = out.pop("statistics")
    if "maps" in out:
        out["maps"] = arrays.as_image_grid(out["maps"], model.image_shape)
    flat = {**out, **{f"statistic_{name}": values for name, values in statistics.items()}}
    return arrays.answer(kind, "score", flat, {"model": model.name, **out, "statistics": statistics}, _headers(model))
