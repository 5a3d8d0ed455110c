"""/v2/repository: the Open Inference Protocol's model repository extension, as Triton answers it,
so ``tritonclient.http``'s ``get_model_repository_index``, ``load_model`` and ``unload_model`` work.

Models here are the repository's folders (``fashion-mnist``); inference addresses their graphs
(``fashion-mnist-decoder``). Every route needs an admin key (``VAE_ADMIN_KEYS``; none set: 403).
``load`` and ``unload`` are for ``VAE_MODEL_CONTROL=explicit``: in ``none`` and ``poll`` modes the
folder decides (SIGHUP or the poll rescans it), as in Triton.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.responses import Response

from .. import rules
from ..arrays import NumpyJSONResponse, parse_json
from ..errors import OIP_PREFIX, Conflict, InvalidInput
from ..peers import raise_errors
from ..registry import LOADING, READY, Registry

Name = Annotated[str, Path(description="a model folder of the repository", examples=["fashion-mnist"])]
STATES = {READY: "READY", LOADING: "LOADING"}  # Triton's states; anything else is UNAVAILABLE


async def require_admin_key(request: Request) -> None:
    rules.authorize_admin(request.headers, request.app.state.settings.admin_key_list)


router = APIRouter(
    prefix=f"{OIP_PREFIX}/repository",
    tags=["model repository (Triton's extension)"],
    default_response_class=NumpyJSONResponse,
    dependencies=[Depends(require_admin_key)],
)


def _registry(request: Request) -> Registry:
    return request.app.state.registry


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


def _explicit(request: Request, action: str) -> None:
    mode = request.app.state.settings.model_control
    if mode != "explicit":
        raise Conflict(f"{action} is for VAE_MODEL_CONTROL=explicit; in {mode!r} mode the repository folder decides")


@router.post("/index", summary="every model of the repository: name, version, state (and why, if unavailable)")
async def index(request: Request) -> list[dict]:
    ready_only = (await _body(request)).get("ready", False)
    if not isinstance(ready_only, bool):
        raise InvalidInput(f"'ready' must be true or false, got {ready_only!r}")
    entries = [e for e in _registry(request).entries.values() if e.state == READY or not ready_only]
    return [
        {"name": e.name, "version": e.version or "", "state": STATES.get(e.state, "UNAVAILABLE")}
        | ({"reason": e.reason} if e.reason else {})
        for e in sorted(entries, key=lambda e: e.name)
    ]


@router.post("/models/{name}/load", summary="load (or swap to) the newest version of a model folder")
async def load(name: Name, request: Request) -> Response:
    overrides = [key for key in (await _body(request))["parameters"] if key == "config" or key.startswith("file:")]
    if overrides:
        raise InvalidInput(f"{', '.join(overrides)}: a model loads from its folder here; copy the files there instead")
    _explicit(request, "load")
    # Every worker process loads it; the answer comes when all of them serve the new state.
    for reply in raise_errors(await request.app.state.peers.all({"op": "load", "name": name})):
        entry = reply["entry"]
        if entry["state"] != READY:
            raise InvalidInput(f"failed to load {name!r}: {entry['reason']}")
        if refused := entry.get("refused"):  # the old version still serves: say why the new one did not
            raise InvalidInput(f"failed to load {name!r} version {refused['version']}: {refused['reason']}")
    return Response(status_code=200)


@router.post("/models/{name}/unload", summary="stop serving a model (its queued requests finish first)")
async def unload(name: Name, request: Request) -> Response:
    await _body(request)  # unload_dependents: a model here has none
    _explicit(request, "unload")
    raise_errors(await request.app.state.peers.all({"op": "unload", "name": name}))
    return Response(status_code=200)
