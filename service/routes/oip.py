"""/v2: the Open Inference Protocol (KServe v2) beside the REST API, on the same batchers.

Protocol parsing and answers live in ``service.oip``; these routes find the graph, apply the
server's limits and run it. Errors are ``{"error": "..."}`` (see ``oip_error`` in app.py).
"""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response

from .. import __version__
from ..batcher import DeadlineExceeded, QueueFull
from ..deps import api_key_problem
from ..lifecycle import not_ready, run_or_abandon
from ..oip import EXTENSIONS, HEADER_LENGTH, OIPError, bad_request, infer_response, model_metadata, parse_infer_request
from ..responses import NumpyJSONResponse
from ..runtime import ModelRuntime, Registry

# Examples in OpenAPI, so a client (or schemathesis) finds a real model to call.
ModelName = Annotated[str, Path(description="<model>-<graph>", examples=["fashion-mnist-decoder"])]

router = APIRouter(prefix="/v2", tags=["open inference protocol (KServe v2)"], default_response_class=NumpyJSONResponse)


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _graph(registry: Registry, name: str, version: str | None = None) -> tuple[ModelRuntime, str]:
    """``fashion-mnist-decoder`` -> (the fashion-mnist runtime, "decoder"); 404 for anything else."""
    model_name, _, graph = name.rpartition("-")
    runtime = registry.models.get(model_name)
    if runtime is None or graph not in runtime.batchers:
        if model_name in registry.refused:
            raise OIPError(503, f"model {name!r} is unavailable: {registry.refused[model_name]}")
        raise OIPError(404, f"unknown model {name!r}; models are <model>-<graph>, e.g. {next(iter(_names(registry)), 'none')}")
    if version is not None and version != runtime.manifest.version:
        raise OIPError(404, f"model {name!r} has no version {version!r} (it serves {runtime.manifest.version!r})")
    return runtime, graph


async def require_api_key(request: Request) -> None:
    """The API key check of the REST routes, answered in the protocol's error shape."""
    if problem := api_key_problem(request):
        raise OIPError(401, problem, {"WWW-Authenticate": "Bearer"})


KEYED = [Depends(require_api_key)]


def _names(registry: Registry) -> list[str]:
    return [f"{m}-{g}" for m, runtime in registry.models.items() for g in runtime.batchers]


@router.get("", summary="server metadata: name, version, extensions")
async def server_metadata() -> dict:
    return {"name": "vae-serve", "version": __version__, "extensions": EXTENSIONS}


@router.get("/health/live", summary="200 while the process runs (empty body)", response_class=Response)
async def server_live() -> Response:
    return Response(status_code=200)


@router.get("/health/ready", summary="200 once every model is loaded and warmed up (empty body)", response_class=Response)
async def server_ready(request: Request) -> Response:
    if problem := not_ready(request):
        raise OIPError(503, f"not ready: {problem}")
    return Response(status_code=200)


@router.get("/models/stats", summary="statistics of every model", dependencies=KEYED)
async def all_stats(request: Request) -> dict:
    return {"model_stats": [runtime.stats[graph].report(f"{model}-{graph}", runtime.manifest.version)
                            for model, runtime in _registry(request).models.items() for graph in runtime.batchers]}


@router.get("/models/{name}", summary="model metadata: inputs and outputs with datatypes and shapes")
@router.get("/models/{name}/versions/{version}", summary="model metadata of one version")
async def metadata(name: ModelName, request: Request, version: str | None = None) -> dict:
    runtime, graph = _graph(_registry(request), name, version)
    return model_metadata(name, runtime.manifest.version, runtime.manifest.graphs[graph])


@router.get("/models/{name}/ready", summary="200 when the model can serve (empty body)", response_class=Response)
@router.get("/models/{name}/versions/{version}/ready", summary="200 when this version can serve (empty body)", response_class=Response)
async def model_ready(name: ModelName, request: Request, version: str | None = None) -> Response:
    _graph(_registry(request), name, version)
    if problem := not_ready(request):
        raise OIPError(503, f"model {name!r} is not ready: {problem}")
    return Response(status_code=200)


@router.get("/models/{name}/stats", summary="Triton-style inference statistics", dependencies=KEYED)
@router.get("/models/{name}/versions/{version}/stats", summary="statistics of one version", dependencies=KEYED)
async def model_stats(name: ModelName, request: Request, version: str | None = None) -> dict:
    runtime, graph = _graph(_registry(request), name, version)
    return {"model_stats": [runtime.stats[graph].report(name, runtime.manifest.version)]}


@router.post("/models/{name}/infer", summary="inference, with JSON or binary tensors", dependencies=KEYED)
@router.post("/models/{name}/versions/{version}/infer", summary="inference on one version", dependencies=KEYED)
async def infer(name: ModelName, request: Request, version: str | None = None) -> Response:
    registry, settings = _registry(request), request.app.state.settings
    runtime, graph = _graph(registry, name, version)
    spec = runtime.manifest.graphs[graph]
    parsed = parse_infer_request(await request.body(), request.headers.get(HEADER_LENGTH), spec)
    first = next(iter(parsed.inputs))
    rows = parsed.inputs[first].shape[spec.batch_axes[first]]
    samples = parsed.inputs["eps"].shape[0] if "eps" in parsed.inputs else 1  # K: each row costs K decoder rows
    if rows > settings.max_request_rows:
        raise bad_request(f"batch of {rows} rows is over this server's limit of {settings.max_request_rows}")
    if samples * rows > settings.max_sample_rows:
        raise bad_request(f"eps: {samples} samples × {rows} rows is over this server's limit of {settings.max_sample_rows}")
    timeout_s = settings.request_timeout_ms / 1000 if parsed.timeout_s is None else parsed.timeout_s
    if timeout_s > settings.max_request_timeout_ms / 1000:
        raise bad_request(f"parameters.timeout of {timeout_s * 1e6:.0f} µs is over this server's cap of {settings.max_request_timeout_ms * 1000:.0f} µs")
    work = runtime.batchers[graph].submit(parsed.inputs, weight=samples, deadline=time.perf_counter() + timeout_s)
    try:
        results = await run_or_abandon(request, work)
    except QueueFull as exc:
        raise OIPError(503, f"server busy: {exc}", {"Retry-After": "1"}) from None
    except DeadlineExceeded:  # dropped from the queue at its deadline: it never reached ORT
        raise OIPError(504, f"still queued after {timeout_s * 1e6:.0f} µs (parameters.timeout, default VAE_REQUEST_TIMEOUT_MS)") from None
    body, headers = infer_response(name, runtime.manifest.version, parsed, results)
    return Response(body, headers=headers)
