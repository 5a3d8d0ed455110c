"""Ray Serve: the same FastAPI app (``create_app``), replicated and autoscaled by Ray.

    serve run deploy/ray/serve.yaml       # a local Ray; `serve deploy` sends it to a running cluster

Each replica builds the app itself (settings from its environment, models loaded and warmed up in
the lifespan) and keeps its own batchers; Ray's HTTP proxy spreads requests over the replicas and
the autoscaler adds replicas when each holds more than ``target_ongoing_requests``.
"""

from __future__ import annotations

from typing import Any

from ray import serve

from .app import create_app

# Defaults for ``serve run service.ray_app:build_app``; a Serve config file overrides any of them.
DEPLOYMENT: dict[str, Any] = {
    "name": "vae-serve",
    "autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 64},
    "max_ongoing_requests": 512,  # the batcher wants many requests in flight per replica
    "ray_actor_options": {"num_cpus": 1, "num_gpus": 0},
    "graceful_shutdown_timeout_s": 30,
    "health_check_period_s": 10,
}


class VAEServe:
    """The replica: its routes are the FastAPI app's, built on the replica by ``create_app``."""


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Ray Serve's application builder (``import_path: service.ray_app:build_app``).

    ``args`` override DEPLOYMENT's options, e.g. ``{"num_replicas": 2}`` instead of autoscaling.
    """
    options = {**DEPLOYMENT, **(args or {})}
    if "num_replicas" in options:
        options.pop("autoscaling_config", None)
    return serve.deployment(**options)(serve.ingress(create_app)(VAEServe)).bind()
