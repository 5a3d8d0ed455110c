"""The app factory: ``create_app(settings)`` wires routes, middleware and the model lifespan."""

from __future__ import annotations

import asyncio
import gc
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from . import __version__, tracing
from .errors import ClientGone, ServiceError, client_gone, service_error, validation_error
from .hot import HotRoutes
from .lifecycle import Lifecycle
from .metrics import Metrics
from .middleware import BodyLimitMiddleware, RequestMiddleware, TracedRequestMiddleware
from .peers import LocalPeers, WorkerLink
from .registry import Registry
from .routes import inference, meta, oip, playground, repository
from .settings import Settings, get_settings
from .tracing import tracer_from_environment

log = logging.getLogger(__name__)

# Headers a browser client may read: the request id and what NPY answers carry beside the array.
EXPOSED_HEADERS = [
    "X-Request-ID",
    "X-Model",
    "X-Seed",
    "X-Array",
    "X-Other-Arrays",
    "Retry-After",
    "Inference-Header-Content-Length",
]

DESCRIPTION = """A Variational Autoencoder served with onnxruntime and dynamic cross-request batching.

All likelihoods are in **nats**. `/elbo` returns the evidence lower bound, its reconstruction and KL
terms, the importance-weighted (IWAE) estimate of log p(x), and their gap, which estimates
KL(q(z|x) ‖ p(z|x)). A low log p(x) marks an input the model finds unlikely (an anomaly score).
"""


def create_app(
    settings: Settings | None = None, peers: LocalPeers | WorkerLink | None = None, grpc: bool = False
) -> FastAPI:
    """The app; ``peers`` reaches every worker process (``service.workers``), or this one alone.
    ``grpc``: also serve the Open Inference Protocol over gRPC on ``VAE_GRPC_PORT`` (a server
    process does; an app mounted elsewhere, as in Ray Serve, does not)."""
    settings = settings or get_settings()
    peers = peers or LocalPeers()
    tracer = tracer_from_environment()  # None unless OTEL_TRACES_EXPORTER asks for traces
    metrics = Metrics(counts_model_events=peers.first, tracer=tracer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        registry = Registry(settings, metrics)
        await asyncio.to_thread(registry.load_all)
        app.state.registry = registry
        await peers.start(app.state)  # a worker applies the loads and unloads the others did
        gc.freeze()  # the loaded app and models are permanent: later collections skip them
        # Warm-up runs in the background: /health/live answers at once, /health/ready turns 200 after.
        warm_up = asyncio.create_task(asyncio.to_thread(registry.warm_up)) if settings.warmup else None
        if warm_up is None:
            registry.ready = True
        stop_watching = registry.watch(owner=peers.owns_repository)  # poll mode and SIGHUP: new versions load
        grpc_server = None
        if grpc and settings.grpc_port:
            from . import grpc_server as grpc_module  # grpcio only where gRPC is served

            grpc_server = await grpc_module.start(app.state, settings.grpc_port, settings.host)
        try:
            yield
        finally:
            if grpc_server is not None:  # after the HTTP drain: calls in flight finish within the grace
                await grpc_server.stop(settings.shutdown_grace_s)
            stop_watching()
            if warm_up is not None and not warm_up.done():
                await asyncio.wait([warm_up], timeout=30)
            await peers.stop()
            await registry.close()
            if tracer is not None:
                tracing.shutdown(tracer)

    # /docs and /redoc with their scripts and styles served from the app, not a CDN
    app = FastAPIOffline(
        title="vae-serve", version=__version__, description=DESCRIPTION, lifespan=lifespan, static_url="/docs/assets"
    )
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.peers = peers
    app.state.tracer = tracer
    app.state.lifecycle = lifecycle = Lifecycle()
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(ClientGone, client_gone)
    app.include_router(inference.router)
    app.include_router(meta.router)
    app.include_router(oip.router)
    app.include_router(repository.router)
    app.include_router(playground.router)
    app.mount("/static", StaticFiles(directory=playground.STATIC), name="static")
    # The hot routes sit in front of Starlette's own stack (its error middleware, routing, Request
    # objects), the pure-ASGI middleware in front of both: set as the app's stack, so every server
    # that runs the app (uvicorn, Ray Serve, a test's ASGI transport) goes through it.
    front = HotRoutes(app.build_middleware_stack(), app.state, inference.HOT_ROUTES, oip.infer_tensors)
    front = BodyLimitMiddleware(front, max_bytes=settings.max_body_bytes)
    if settings.cors_origin_list:
        front = CORSMiddleware(
            front,
            allow_origins=settings.cors_origin_list,
            allow_methods=["GET", "POST"],
            allow_headers=["*"],
            expose_headers=EXPOSED_HEADERS,
            max_age=600,
        )
    options = {"metrics": metrics, "lifecycle": lifecycle, "access_log": settings.access_log}
    if tracer is None:
        app.middleware_stack = RequestMiddleware(front, **options)
    else:
        app.middleware_stack = TracedRequestMiddleware(front, tracer, **options)
    return app
