"""FastAPI dependencies and request helpers: the model registry, the model a request names, the API key."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from .runtime import ModelRuntime, Registry

# ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, a thread
# hop per request. The inference routes skip dependencies altogether (see routes/inference.py).


async def get_registry(request: Request) -> Registry:
    return request.app.state.registry


RegistryDep = Annotated[Registry, Depends(get_registry)]


def resolve_model(registry: Registry, name: str | None) -> ModelRuntime:
    """The named (or default) model; 404 if it does not exist, 503 if it was refused at load."""
    name = name or registry.default_model
    if name in registry.models:
        return registry.models[name]
    if name in registry.refused:
        raise HTTPException(503, f"model {name!r} is unavailable: {registry.refused[name]}")
    raise HTTPException(404, f"unknown model {name!r}; available: {', '.join(sorted(registry.models)) or 'none'}")


def api_key_problem(request: Request) -> str | None:
    """None if the request may pass: no keys are configured, or it presents one of them.

    Every configured key is compared in constant time, and all of them are compared, so the
    answer's timing says nothing about how much of a key matched.
    """
    keys = request.app.state.settings.api_key_list
    if not keys:
        return None
    authorization = request.headers.get("authorization", "")
    if authorization[:7].lower() == "bearer ":
        presented = authorization[7:].strip()
    else:
        presented = request.headers.get("x-api-key", "")
    if not presented:
        return "missing API key: send Authorization: Bearer <key> or X-API-Key: <key>"
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented.encode(), key.encode())
    return None if matched else "invalid API key"


def require_api_key(request: Request) -> None:
    """Called first thing in the inference handlers (a plain call, not a FastAPI dependency: this
    is the hot path, and a dependency costs the solver a few percent of /sample's time)."""
    if problem := api_key_problem(request):
        raise HTTPException(401, problem, headers={"WWW-Authenticate": "Bearer"})
