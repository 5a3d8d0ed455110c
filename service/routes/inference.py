"""POST /encode, /decode, /sample, /elbo: JSON or NPY in, arrays through the batchers, JSON/NPY/NPZ out.

Each handler reads top to bottom: the rules that need no body (API key, deadline), the body
(``arrays``), the model and the size rules, the model's graphs (``runtime``), the answer
(``arrays``). Any failure is a domain error, rendered by ``errors``.
"""

from __future__ import annotations

import random
import secrets

from fastapi import APIRouter

from .. import arrays, rules
from ..answer import Answer
from ..hot import Call, Handler, documented
from ..lifecycle import run_or_abandon
from ..noise import Noise
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
# openapi_extra document the contract, pydantic never sees the arrays. ``service.hot`` serves
# them as plain ASGI; FastAPI documents them (``documented``).
router = APIRouter(tags=["inference"], default_response_class=arrays.NumpyJSONResponse)
HOT_ROUTES: dict[str, Handler] = {}

NPY_IMAGES = (
    "float32 images (N, H, W), (N, H, W, C) or (N, H·W·C) of the model's image_shape, in [0, 1]; options in the query"
)
NPY_LATENTS = "float32 latents, shape (N, latent_dim); options in the query string"

_seeds = random.Random(secrets.randbits(128))  # seeds for requests that give none: unpredictable enough, no syscall


def _seed(given: int | None) -> int:
    """The request's seed, or one picked for it (``/sample`` returns it): a seed gives the same draw
    on any server, in any batch."""
    return _seeds.getrandbits(63) if given is None else given


def _headers(model) -> dict[str, str]:
    """Which model and version answered: a request runs on one version from start to end."""
    return {"X-Model": model.name, "X-Model-Version": model.version}


def _admit(call: Call) -> tuple[float, str]:
    """What needs no body: the API key, the deadline (a perf_counter value) and the answer's media type."""
    settings, headers = call.state.settings, call.headers
    rules.authorize(headers, settings.api_key_list)
    return rules.deadline(settings, rules.header_timeout_s(headers)), arrays.negotiate(headers.get("accept"))


async def _images_request(call: Call, options_model):
    """Options, the model, x (B, H·W·C) and ε (K, B, Z) keyed by the seed (drawn in its batch)."""
    options, array = await arrays.read_request(call, options_model, "inputs")
    model = call.state.registry.resolve(options.model)
    rules.check_size(call.state.settings, len(array), options.samples)
    x = arrays.images(array, model.image_shape)
    eps = Noise.of(_seed(options.seed), (options.samples, len(x), model.latent_dim), axis=1)  # (K, B, Z), drawn later
    return options, model, x, eps


@documented(
    router,
    HOT_ROUTES,
    "/encode",
    response_model=EncodeResponse,
    summary="q(z|x): posterior mean and log-variance (and samples)",
    openapi_extra=request_doc(EncodeRequest, EncodeOptions, NPY_IMAGES),
    responses=array_responses("mean", "mean, log_var and z"),
)
async def encode(call: Call) -> Answer:
    deadline, kind = _admit(call)
    _, model, x, eps = await _images_request(call, EncodeOptions)
    out = await run_or_abandon(call, model.encode(x, eps, deadline))
    return arrays.answer(kind, "mean", out, {"model": model.name, **out}, _headers(model))


@documented(
    router,
    HOT_ROUTES,
    "/decode",
    response_model=ImagesResponse,
    summary="E[x|z]: the decoder's mean image for each latent",
    openapi_extra=request_doc(DecodeRequest, DecodeOptions, NPY_LATENTS),
    responses=array_responses("images", "images"),
)
async def decode(call: Call) -> Answer:
    deadline, kind = _admit(call)
    options, array = await arrays.read_request(call, DecodeOptions, "latents")
    model = call.state.registry.resolve(options.model)
    rules.check_size(call.state.settings, len(array), rows_field="latents")
    z = arrays.latents(array, model.latent_dim)  # (B, Z)
    out = await run_or_abandon(call, model.decode(z, deadline))
    images = arrays.as_image_grid(out["image"], model.image_shape)
    body = {"model": model.name, "images": arrays.images_payload(images, options.format)}
    return arrays.answer(kind, "images", {"images": images}, body, _headers(model))


@documented(
    router,
    HOT_ROUTES,
    "/sample",
    response_model=SampleResponse,
    summary="x ~ p(x): decode z ~ N(0, temperature² I)",
    openapi_extra=request_doc(SampleRequest),
    responses=array_responses("images", "images and latents"),
)
async def sample(call: Call) -> Answer:
    deadline, kind = _admit(call)
    options, _ = await arrays.read_request(call, SampleRequest)
    model = call.state.registry.resolve(options.model)
    rules.check_size(call.state.settings, options.n, rows_field="n")
    seed = _seed(options.seed)
    z = Noise.of(seed, (options.n, model.latent_dim), axis=0, scale=options.temperature)  # (n, Z), drawn in the batch
    out = await run_or_abandon(call, model.decode(z, deadline))
    z = out["z"]
    images = arrays.as_image_grid(out["image"], model.image_shape)
    body = {"model": model.name, "seed": seed, "latents": z, "images": arrays.images_payload(images, options.format)}
    headers = {**_headers(model), "X-Seed": str(seed)}
    return arrays.answer(kind, "images", {"images": images, "latents": z}, body, headers)


@documented(
    router,
    HOT_ROUTES,
    "/elbo",
    response_model=ElboResponse,
    summary="ELBO, its terms and the IWAE log p(x), per input, in nats",
    openapi_extra=request_doc(ElboRequest, ElboOptions, NPY_IMAGES),
    responses=array_responses("log_likelihood", "elbo, reconstruction, kl, log_likelihood and gap"),
)
async def elbo(call: Call) -> Answer:
    deadline, kind = _admit(call)
    _, model, x, eps = await _images_request(call, ElboOptions)
    out = await run_or_abandon(call, model.score(x, eps, deadline))
    return arrays.answer(kind, "log_likelihood", out, {"model": model.name, **out}, _headers(model))


@documented(
    router,
    HOT_ROUTES,
    "/anomaly",
    response_model=AnomalyResponse,
    summary="calibrated out-of-distribution score, its percentile and the outlier flag, per input",
    openapi_extra=request_doc(AnomalyRequest, AnomalyOptions, NPY_IMAGES),
    responses=array_responses("score", "score, percentile, outlier, log_likelihood, statistic_* and maps"),
)
async def anomaly(call: Call) -> Answer:
    deadline, kind = _admit(call)
    options, model, x, eps = await _images_request(call, AnomalyOptions)
    out = await run_or_abandon(call, model.anomaly(x, eps, options.threshold, options.maps, deadline))
    statistics = out.pop("statistics")
    if "maps" in out:
        out["maps"] = arrays.as_image_grid(out["maps"], model.image_shape)
    flat = {**out, **{f"statistic_{name}": values for name, values in statistics.items()}}
    return arrays.answer(kind, "score", flat, {"model": model.name, **out, "statistics": statistics}, _headers(model))
