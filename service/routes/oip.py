"""/v2: the Open Inference Protocol (KServe v2) beside the REST API, on the same batchers.

Protocol parsing and answers live in ``service.oip_codec``, the operations (the graph, the rules,
the run) in ``service.oip_service``, which gRPC shares; these routes read HTTP and answer it.
Domain errors are rendered in the protocol's ``{"error": "..."}`` shape (``errors.render``, by the
/v2 prefix).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from .. import __version__, oip_service
from ..answer import Answer
from ..arrays import NumpyJSONResponse
from ..errors import OIP_PREFIX
from ..hot import Call, respond
from ..lifecycle import run_or_abandon
from ..oip_codec import EXTENSIONS, HEADER_LENGTH, infer_response, model_metadata, parse_infer_request
from ..oip_service import find_graph
from ..registry import Registry

# Examples in OpenAPI, so a client (or schemathesis) finds a real model to call.
ModelName = Annotated[str, Path(description="<model>-<graph>", examples=["fashion-mnist-decoder"])]

router = APIRouter(
    prefix=OIP_PREFIX, tags=["open inference protocol (KServe v2)"], default_response_class=NumpyJSONResponse
)


def _registry(request: Request) -> Registry:
    return request.app.state.registry


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
    await oip_service.server_ready(request.app.state)
    return Response(status_code=200)


@router.get("/models/stats", summary="statistics of every model")
async def all_stats(request: Request) -> dict:
    return {"model_stats": await oip_service.statistics(request.app.state, request.headers)}


@router.get("/models/{name}", summary="model metadata: inputs and outputs with datatypes and shapes")
@router.get("/models/{name}/versions/{version}", summary="model metadata of one version")
async def metadata(name: ModelName, request: Request, version: str | None = None) -> dict:
    runtime, graph = find_graph(_registry(request), name, version)
    return model_metadata(name, runtime.version, runtime.manifest.graphs[graph])


@router.get("/models/{name}/ready", summary="200 when the model can serve (empty body)", response_class=Response)
@router.get(
    "/models/{name}/versions/{version}/ready",
    summary="200 when this version can serve (empty body)",
    response_class=Response,
)
async def model_ready(name: ModelName, request: Request, version: str | None = None) -> Response:
    await oip_service.model_ready(request.app.state, name, version)
    return Response(status_code=200)


@router.get("/models/{name}/stats", summary="Triton-style inference statistics")
@router.get("/models/{name}/versions/{version}/stats", summary="statistics of one version")
async def model_stats(name: ModelName, request: Request, version: str | None = None) -> dict:
    return {"model_stats": await oip_service.statistics(request.app.state, request.headers, name, version)}


@router.post("/models/{name}/infer", summary="inference, with JSON or binary tensors")
@router.post("/models/{name}/versions/{version}/infer", summary="inference on one version")
async def infer(name: ModelName, request: Request, version: str | None = None) -> Response:
    # OpenAPI's entry for OIP infer (a docstring here would become its description); service.hot serves it
    return await respond(infer_tensors, request)


async def infer_tensors(call: Call) -> Answer:
    """One graph on the request's tensors (``oip_service.infer``), as HTTP reads and answers it."""
    body, header_length = await call.body(), call.headers.get(HEADER_LENGTH)
    runtime, parsed, results = await oip_service.infer(
        call.state,
        call.headers,
        call.params["name"],
        call.params.get("version"),
        parse=lambda spec: parse_infer_request(body, header_length, spec),
        wait=lambda work: run_or_abandon(call, work),
    )
    body, headers = infer_response(call.params["name"], runtime.version, parsed, results)
    return Answer(body, media_type=None, headers={**headers, "X-Model-Version": runtime.version})
