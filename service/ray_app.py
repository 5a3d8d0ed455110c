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

NAME = "vae-serve"  # the deployment's name, which deploy/ray/serve.yaml configures


class VAEServe:
    """The replica: its routes are the FastAPI app's, built on the replica by ``create_app``."""


def build_app(args: dict[str, Any] | None = None) -> serve.Application:
    """Ray Serve's application builder (``import_path: service.ray_app:build_app``).

    The deployment's options (replicas, autoscaling, resources) come from the Serve config file,
    or Ray's defaults under ``serve run service.ray_app:build_app``; ``args`` may set any of them,
    e.g. ``{"num_replicas": 2}``.
    """
    return serve.deployment(name=NAME, **(args or {}))(serve.ingress(create_app)(VAEServe)).bind()
