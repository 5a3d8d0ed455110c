"""GET /models, /models/{name} and its report figures, /health/live, /health/ready, /metrics."""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from ..errors import ModelUnavailable, UnknownModel
from ..peers import cluster_not_ready
from ..registry import Registry
from ..runtime import ModelRuntime


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


RegistryDep = Annotated[Registry, Depends(get_registry)]

router = APIRouter()


REPORT_TYPES = {".png": "image/png", ".json": "application/json"}


def report_files(model: ModelRuntime) -> dict[str, FilePath]:
    """The training report's figures (and the latent map's geometry) shipped with a model version."""
    folder = model.path / "report"
    if not folder.is_dir():
        return {}
    return {p.name: p for p in sorted(folder.iterdir()) if p.suffix in REPORT_TYPES and p.is_file()}


def describe(model: ModelRuntime, registry: Registry) -> dict:
    return {
        **model.manifest.summary(),
        **registry.entries[model.name].describe(),  # state, version, and a refused newer version if any
        "status": "available",
        "provider": model.provider,
        "default": model.name == registry.default_model,
        "report": list(report_files(model)),
    }


def describe_unavailable(name: str, registry: Registry) -> dict:
    return {**registry.entries[name].describe(), "status": "unavailable"}


@router.get("/models", tags=["models"], summary="every model: version, state, manifest metadata, metrics, provider")
async def list_models(registry: RegistryDep) -> dict:
    served = [describe(m, registry) for m in registry.models.values()]
    others = [describe_unavailable(n, registry) for n in registry.entries if n not in registry.models]
    return {"default": registry.default_model, "models": served + others}


@router.get("/models/{name}", tags=["models"], summary="one model: version, state, manifest metadata")
async def get_model(name: Annotated[str, Path(examples=["fashion-mnist"])], registry: RegistryDep) -> dict:
    try:
        return describe(registry.resolve(name), registry)
    except ModelUnavailable:
        return JSONResponse(describe_unavailable(name, registry), status_code=503)


@router.get("/models/{name}/report/{file}", tags=["models"], summary="a figure from the model's training report")
async def report_file(
    name: Annotated[str, Path(examples=["fashion-mnist"])],
    file: Annotated[str, Path(examples=["samples.png"])],
    registry: RegistryDep,
) -> FileResponse:
    path = report_files(registry.resolve(name)).get(file)  # only names listed from the folder: no path tricks
    if path is None:
        raise UnknownModel(f"model {name!r} has no report file {file!r}")
    return FileResponse(path, media_type=REPORT_TYPES[path.suffix])


@router.get("/health/live", tags=["health"], summary="the process is up")
async def live() -> dict:
    return {"status": "live"}


@router.get("/health/ready", tags=["health"], summary="200 once models are loaded and warmed up, else 503")
async def ready(registry: RegistryDep, request: Request):
    if problem := await cluster_not_ready(request.app.state):
        return JSONResponse({"status": problem}, status_code=503)
    return {"status": "ready", "models": sorted(registry.models)}


@router.get("/metrics", tags=["health"], summary="Prometheus metrics")
async def metrics(request: Request) -> Response:
    return Response(request.app.state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
