"""The models a service serves, by name: loaded at start, looked up per request, closed at exit.

A model that fails to load is refused with one log line and its reason; the others are served.
``resolve`` is the one place a request's model name becomes a model or a domain error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from .errors import ModelUnavailable, UnknownModel
from .metrics import Metrics
from .runtime import ModelRuntime, load_model, requested_providers
from .settings import Settings

log = logging.getLogger(__name__)


class Registry:
    """Every servable model by name, the ones refused and why, and the readiness flag."""

    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings, self.metrics = settings, metrics
        self.models: dict[str, ModelRuntime] = {}
        self.refused: dict[str, str] = {}
        self.ready = False
        self.executor = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="ort")

    @property
    def default_model(self) -> str:
        return self.settings.default_model

    def resolve(self, name: str | None) -> ModelRuntime:
        """The named (or default) model; UnknownModel (404), or ModelUnavailable (503) if it was refused."""
        name = name or self.default_model
        model = self.models.get(name)
        if model is not None:
            return model
        if name in self.refused:
            raise ModelUnavailable(f"model {name!r} is unavailable: {self.refused[name]}")
        raise UnknownModel(f"unknown model {name!r}; available: {', '.join(sorted(self.models)) or 'none'}")

    def load_all(self) -> None:
        root = self.settings.model_dir
        manifests = sorted(root.glob("*/manifest.json")) if root.is_dir() else []
        if not manifests:
            log.error("no models found: %s has no */manifest.json", root.resolve())
        providers = requested_providers(self.settings)
        for path in manifests:
            name = path.parent.name
            try:
                self.models[name] = load_model(path.parent, providers, self.settings, self.metrics, self.executor)
            except Exception as exc:  # any failure refuses this model only; the others still serve
                reason = str(exc).splitlines()[0]
                self.refused[name] = reason
                log.error("model %s refused: %s", name, reason)
        if self.default_model not in self.models:
            log.warning("default model %r is not being served (served: %s)", self.default_model, sorted(self.models))

    def warm_up(self) -> None:
        started = time.perf_counter()
        runs = sum(model.warm_up() for model in self.models.values())
        self.ready = True
        elapsed = time.perf_counter() - started
        log.info("warm-up done: %d runs over %d models in %.2fs; ready", runs, len(self.models), elapsed)

    async def close(self) -> None:
        await asyncio.gather(*(model.close() for model in self.models.values()))
        self.executor.shutdown(wait=False, cancel_futures=True)
