"""/v2: the Open Inference Protocol (KServe v2) beside the REST API, on the same batchers.

Protocol parsing and answers live in ``service.oip_codec``; these routes find the graph, apply
the same rules as the REST routes (``rules``) and run it. Domain errors are rendered in the
protocol's ``{"error": "..."}`` shape (``errors.render``, by the /v2 prefix).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response

from .. import __version__, rules
from ..answer import Answer
from ..arrays import NumpyJSONResponse
from ..errors import OIP_PREFIX, ModelUnavailable, ServiceUnavailable, UnknownModel
from ..hot import Call, respond
from ..lifecycle import run_or_abandon
from ..metrics import merge_reports
from ..oip_codec import EXTENSIONS, HEADER_LENGTH, infer_response, model_metadata, parse_infer_request
from ..peers import cluster_not_ready, raise_errors
from ..registry import Registry
from ..runtime import ModelRuntime

# Examples in OpenAPI, so a client (or schemathesis) finds a real model to call.
ModelName = Annotated[str, Path(description="<model>-<graph>", examples=["fashion-mnist-decoder"])]

router = APIRouter(
    prefix=OIP_PREFIX, tags=["open inference protocol (KServe v2)"], default_response_class=NumpyJSONResponse
)


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _graph(registry: Registry, name: str, version: str | None = None) -> tuple[ModelRuntime, str]:
    """``fashion-mnist-decoder`` -> (the fashion-mnist runtime, "decoder"); 404 for anything else."""
    model_name, _, graph = name.rpartition("-")
    try:
        runtime = registry.resolve(model_name)
    except ModelUnavailable as exc:
        reason = registry.entries[model_name].reason or "loading"
        raise ModelUnavailable(f"model {name!r} is unavailable: {reason}") from exc
    except UnknownModel:
        runtime = None
    if runtime is None or not model_name or graph not in runtime.batchers:
        example = next(iter(_names(registry)), "none")
        raise UnknownModel(f"unknown model {name!r}; models are <model>-<graph>, e.g. {example}")
    if version is not None and version != runtime.version:
        raise UnknownModel(f"model {name!r} has no version {version!r} (it serves {runtime.version!r})")
    return runtime, graph


async def require_api_key(request: Request) -> None:
    rules.authorize(request.headers, request.app.state.settings.api_key_list)


KEYED = [Depends(require_api_key)]


def _names(registry: Registry) -> list[str]:
    return [f"{m}-{g}" for m, runtime in registry.models.items() for g in runtime.batchers]


@router.get("", summary="server metadata: name, version, extensions")
async def server_metadata() -> dict:
    return {"name": "vae-serve", "version": __version__, "extensions": EXTENSIONS}


@router.get("/health/live", summary="200 while the process runs (empty body)", response_class=Response)
async def server_live() -> Response:
    return Response(status_code=200)


@router.get(
    "/health/ready", summary="200 once every model is loaded and warmed up (empty body)", response_class=Response
)
async def server_ready(request: Request) -> Response:
    if problem := await cluster_not_ready(request.app.state):
        raise ServiceUnavailable(f"not ready: {problem}")
    return Response(status_code=200)


@router.get("/models/stats", summary="statistics of every model", dependencies=KEYED)
async def all_stats(request: Request) -> dict:
    return {"model_stats": await _every_workers_stats(request)}


async def _every_workers_stats(request: Request) -> list[dict]:
    """Each graph's statistics summed over every worker process, in the order this worker lists them."""
    replies = raise_errors(await request.app.state.peers.all({"op": "stats"}))
    by_name: dict[str, list[dict]] = {}
    for reply in replies:
        for report in reply["stats"]:
            by_name.setdefault(report["name"], []).append(report)
    return [merge_reports(reports) for reports in by_name.values()]


@router.get("/models/{name}", summary="model metadata: inputs and outputs with datatypes and shapes")
@router.get("/models/{name}/versions/{version}", summary="model metadata of one version")
async def metadata(name: ModelName, request: Request, version: str | None = None) -> dict:
    runtime, graph = _graph(_registry(request), name, version)
    return model_metadata(name, runtime.version, runtime.manifest.graphs[graph])


@router.get("/models/{name}/ready", summary="200 when the model can serve (empty body)", response_class=Response)
@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="200 when this version can serve (empty body)",
    response_class=Response,
)
async def model_ready(name: ModelName, request: Request, version: str | None = None) -> Response:
    _graph(_registry(request), name, version)
    if problem := await cluster_not_ready(request.app.state):
        raise ServiceUnavailable(f"model {name!r} is not ready: {problem}")
    return Response(status_code=200)


@router.get("/models/{name}/stats", summary="Triton-style inference statistics", dependencies=KEYED)
@router.get("/models/{name}/versions/{version}/stats", summary="statistics of one version", dependencies=KEYED)
async def model_stats(name: ModelName, request: Request, version: str | None = None) -> dict:
    _graph(_registry(request), name, version)
    return {"model_stats": [r for r in await _every_workers_stats(request) if r["name"] == name]}


@router.post("/models/{name}/infer", summary="inference, with JSON or binary tensors")
@router.post("/models/{name}/versions/{version}/infer", summary="inference on one version")
async def infer(name: ModelName, request: Request, version: str | None = None) -> Response:
    # OpenAPI's entry for OIP infer (a docstring here would become its description); service.hot serves it
    return await respond(infer_tensors, request)


async def infer_tensors(call: Call) -> Answer:
    """One graph on the request's tensors: the API key, the graph, the size and deadline rules, the run."""
    settings, headers = call.state.settings, call.headers
    rules.authorize(headers, settings.api_key_list)
    runtime, graph = _graph(call.state.registry, call.params["name"], call.params.get("version"))
    spec = runtime.manifest.graphs[graph]
    parsed = parse_infer_request(await call.body(), headers.get(HEADER_LENGTH), spec)
    first = next(iter(parsed.inputs))
    rows = parsed.inputs[first].shape[spec.batch_axes[first]]
    samples = parsed.inputs["eps"].shape[0] if "eps" in parsed.inputs else 0  # K: each row costs K graph rows
    rules.check_size(settings, rows, samples, rows_field="inputs")
    deadline = rules.deadline(settings, parsed.timeout_s, ("body", "parameters", "timeout"))
    work = runtime.infer(graph, parsed.inputs, weight=max(1, samples), deadline=deadline)
    results = await run_or_abandon(call.receive, work)
    body, headers = infer_response(call.params["name"], runtime.version, parsed, results)
    return Answer(body, media_type=None, headers={**headers, "X-Model-Version": runtime.version})
