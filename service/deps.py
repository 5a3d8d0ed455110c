"""FastAPI dependencies: settings, the model registry, and the model a request names."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request

from .runtime import ModelRuntime, Registry
from .settings import Settings

# Dependencies are ``async def`` on purpose: FastAPI runs a plain ``def`` dependency in its thread
# pool, a thread hop per request that cost a third of the throughput of /sample n=1.


async def app_settings(request: Request) -> Settings:
    """The settings the app was created with (``create_app(settings)``)."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(app_settings)]


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
