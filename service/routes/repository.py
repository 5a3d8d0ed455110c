"""/v2/repository: the Open Inference Protocol's model repository extension, as Triton answers it,
so ``tritonclient.http``'s ``get_model_repository_index``, ``load_model`` and ``unload_model`` work.

Models here are the repository's folders (``fashion-mnist``); inference addresses their graphs
(``fashion-mnist-decoder``). Every route needs an admin key (``VAE_ADMIN_KEYS``; none set: 403).
``load`` and ``unload`` are for ``VAE_MODEL_CONTROL=explicit``: in ``none`` and ``poll`` modes the
folder decides (SIGHUP or the poll rescans it), as in Triton.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response

from .. import oip_service
from ..arrays import NumpyJSONResponse, parse_json
from ..errors import OIP_PREFIX, InvalidInput

Name = Annotated[str, Path(description="a model folder of the repository", examples=["fashion-mnist"])]


router = APIRouter(
    prefix=f"{OIP_PREFIX}/repository",
    tags=["model repository (Triton's extension)"],
    default_response_class=NumpyJSONResponse,
)


async def _body(request: Request) -> dict:
    """The request's JSON object; Triton's clients send none, ``{}`` or ``{"parameters": {...}}``."""
    body = await request.body()
    data = parse_json(body) if body.strip() else {}
    if not isinstance(data, dict):
        raise InvalidInput(f"the body must be a JSON object, got {type(data).__name__}")
    parameters = data.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidInput(f"'parameters' must be a JSON object, got {type(parameters).__name__}")
    return {**data, "parameters": parameters}


@router.post("/index", summary="every model of the repository: name, version, state (and why, if unavailable)")
async def index(request: Request) -> list[dict]:
    ready_only = (await _body(request)).get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidInput(f"'ready' must be true or false, got {ready_only!r}")
    return oip_service.repository_index(request.app.state, request.headers, ready_only)


@router.post("/models/{name}/load", summary="load (or swap to) the newest version of a model folder")
async def load(name: Name, request: Request) -> Response:
    await oip_service.load(request.app.state, request.headers, name, (await _body(request))["parameters"])
    return Response(status_code=200)


@router.post("/models/{name}/unload", summary="stop serving a model (its queued requests finish first)")
async def unload(name: Name, request: Request) -> Response:
    await _body(request)  # unload_dependents: a model here has none
    await oip_service.unload(request.app.state, request.headers, name)
    return Response(status_code=200)
