"""The Open Inference Protocol over gRPC: Triton's ``inference.GRPCInferenceService`` as
``tritonclient.grpc`` calls it, with ``grpc.health.v1`` and server reflection.

It runs in each server process beside HTTP, on the same event loop and batchers (with worker
processes, each binds the port with SO_REUSEPORT and the kernel spreads connections). Every call
goes through ``oip_service``, so the rules are HTTP's: API keys from the ``authorization`` or
``x-api-key`` metadata, the deadline from ``parameters.timeout`` or the gRPC deadline, the size
limits, admission. Domain errors become status codes (``CODES``); a request is never INTERNAL
for what it sent. Messages arrive as HTTP's JSON form would (``grpc_messages``), and outputs go
back as ``raw_output_contents``: the same bytes as HTTP's binary outputs.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from contextlib import nullcontext

import grpc
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

from . import __version__, oip_service
from .errors import ModelUnavailable, ServiceError, ServiceUnavailable, UnknownModel
from .grpc_messages import infer_request_of, infer_response_of, parameter_keys
from .logs import request_id
from .middleware import request_id_for
from .oip_codec import EXTENSIONS, PLATFORM, infer_request, model_metadata
from .peers import cluster_not_ready
from .tracing import server_span

log = logging.getLogger(__name__)

SERVICE = "inference.GRPCInferenceService"
CODES = {  # a domain error's HTTP status (OIP's where it differs) -> the gRPC status Triton answers with
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.FAILED_PRECONDITION,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}
SERVER_FAULTS = {
    grpc.StatusCode.UNAVAILABLE.value[0],
    grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
    grpc.StatusCode.UNKNOWN.value[0],
}  # fmt: skip  (the server's fault, not the request's)
ALWAYS_OPEN = {"ServerLive", "ServerReady", "ModelReady"}  # answered while draining: probes must see the drain


def metadata_of(context: grpc.aio.ServicerContext) -> dict[str, str]:
    """The call's metadata as the rules read headers: lower-case names, the first of repeated keys."""
    found: dict[str, str] = {}
    for key, value in context.invocation_metadata() or ():
        if isinstance(value, str):
            found.setdefault(key.lower(), value)
    return found


def handled(method):
    """A servicer method with the service's rules of engagement: a request id (``x-request-id``
    metadata, or a new one) in every log line, the drain, domain errors as status codes (with
    ``retry-after`` in the trailing metadata when there is one), the metrics, and with tracing on
    a server span that joins the caller's trace."""
    name = method.__name__

    @functools.wraps(method)
    async def call(self: InferenceService, request, context: grpc.aio.ServicerContext):
        metadata = metadata_of(context)
        token = request_id.set(rid := request_id_for(metadata.get("x-request-id", "")))
        tracer = self.state.tracer
        attributes = {"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": name, "vae.request_id": rid}
        traced = nullcontext() if tracer is None else server_span(tracer, f"{SERVICE}/{name}", metadata, attributes)
        started, code = time.perf_counter(), grpc.StatusCode.OK
        self.state.lifecycle.calls_in_flight += 1
        with traced as span:
            try:
                self.state.lifecycle.admit(probe=name in ALWAYS_OPEN)
                return await method(self, request, context)
            except ServiceError as exc:
                code = CODES.get(exc.oip_status or exc.status, grpc.StatusCode.UNKNOWN)
                if exc.headers and "Retry-After" in exc.headers:
                    context.set_trailing_metadata((("retry-after", exc.headers["Retry-After"]),))
                await context.abort(code, exc.message)
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED  # the client left or its deadline passed: its queued rows dropped
                raise
            finally:
                elapsed = time.perf_counter() - started
                self.state.metrics.count_request(f"/{SERVICE}/{name}", code.value[0], elapsed)
                if span is not None:
                    describe_call(span, code, getattr(request, "model_name", "") or getattr(request, "name", ""))
                self.state.lifecycle.calls_in_flight -= 1
                request_id.reset(token)

    return call


def describe_call(span, code: grpc.StatusCode, model: str) -> None:
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if model:
        span.set_attribute("vae.model", model)
    if code.value[0] in SERVER_FAULTS:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, code.name))


class InferenceService(service_pb2_grpc.GRPCInferenceServiceServicer):
    def __init__(self, state) -> None:
        self.state = state

    @handled
    async def ServerLive(self, request, context):
        return service_pb2.ServerLiveResponse(live=True)

    @handled
    async def ServerReady(self, request, context):
        return service_pb2.ServerReadyResponse(ready=await cluster_not_ready(self.state) is None)

    @handled
    async def ModelReady(self, request, context):
        """Ready or not, as Triton answers it: an unknown model is not ready (not an error)."""
        try:
            await oip_service.model_ready(self.state, request.name, request.version or None)
        except (UnknownModel, ServiceUnavailable, ModelUnavailable):
            return service_pb2.ModelReadyResponse(ready=False)
        return service_pb2.ModelReadyResponse(ready=True)

    @handled
    async def ServerMetadata(self, request, context):
        return service_pb2.ServerMetadataResponse(name="vae-serve", version=__version__, extensions=EXTENSIONS)

    @handled
    async def ModelMetadata(self, request, context):
        runtime, graph = oip_service.find_graph(self.state.registry, request.name, request.version or None)
        metadata = model_metadata(request.name, runtime.version, runtime.manifest.graphs[graph])  # HTTP's, as is
        return json_format.ParseDict(metadata, service_pb2.ModelMetadataResponse())

    @handled
    async def ModelConfig(self, request, context):
        runtime, graph = oip_service.find_graph(self.state.registry, request.name, request.version or None)
        spec = runtime.manifest.graphs[graph]
        fp32 = model_config_pb2.DataType.TYPE_FP32
        config = model_config_pb2.ModelConfig(
            name=request.name,
            platform=PLATFORM,
            max_batch_size=0,  # the batch axis is part of each shape (-1: dynamic); batching is the server's
            input=[model_config_pb2.ModelInput(name=n, data_type=fp32, dims=s) for n, s in spec.inputs.items()],
            output=[model_config_pb2.ModelOutput(name=n, data_type=fp32, dims=s) for n, s in spec.outputs.items()],
        )
        return service_pb2.ModelConfigResponse(config=config)

    @handled
    async def ModelInfer(self, request, context):
        message, binary = infer_request_of(request)
        remaining = context.time_remaining()
        cap_s = self.state.settings.max_request_timeout_ms / 1000
        runtime, parsed, results = await oip_service.infer(
            self.state,
            metadata_of(context),
            request.model_name,
            request.model_version or None,
            parse=lambda spec: infer_request(message, binary, spec),
            transport_timeout_s=None if remaining is None else min(remaining, cap_s),  # a long deadline: the cap
        )
        return infer_response_of(request.model_name, runtime.version, parsed, results)

    @handled
    async def ModelStatistics(self, request, context):
        reports = await oip_service.statistics(
            self.state, metadata_of(context), request.name or None, request.version or None
        )
        stats = [json_format.ParseDict(r, service_pb2.ModelStatistics(), ignore_unknown_fields=True) for r in reports]
        return service_pb2.ModelStatisticsResponse(model_stats=stats)

    @handled
    async def RepositoryIndex(self, request, context):
        entries = oip_service.repository_index(self.state, metadata_of(context), request.ready)
        index = [json_format.ParseDict(e, service_pb2.RepositoryIndexResponse.ModelIndex()) for e in entries]
        return service_pb2.RepositoryIndexResponse(models=index)

    @handled
    async def RepositoryModelLoad(self, request, context):
        await oip_service.load(self.state, metadata_of(context), request.model_name, parameter_keys(request.parameters))
        return service_pb2.RepositoryModelLoadResponse()

    @handled
    async def RepositoryModelUnload(self, request, context):
        await oip_service.unload(self.state, metadata_of(context), request.model_name)
        return service_pb2.RepositoryModelUnloadResponse()


class Health(health_pb2_grpc.HealthServicer):
    """``grpc.health.v1``: SERVING only when every worker is ready; NOT_SERVING while warming up or draining."""

    SERVICES = ("", SERVICE)
    WATCH_EVERY_S = 1.0

    def __init__(self, state) -> None:
        self.state = state

    async def _status(self, service: str, context) -> int:
        if service not in self.SERVICES:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {service!r}")
        ready = await cluster_not_ready(self.state) is None
        return health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING

    async def Check(self, request, context):
        return health_pb2.HealthCheckResponse(status=await self._status(request.service, context))

    async def Watch(self, request, context):
        """Each change of status; the stream ends once draining has been said, so a watcher never
        holds a stopping server until its grace runs out."""
        last = None
        while True:
            status = await self._status(request.service, context)
            if status != last:
                yield health_pb2.HealthCheckResponse(status=status)
                last = status
            if self.state.lifecycle.draining:
                return
            await asyncio.sleep(self.WATCH_EVERY_S)


async def start(state, port: int, host: str) -> grpc.aio.Server:
    """The gRPC server on ``host:port`` (SO_REUSEPORT, so every worker process binds it), started."""
    limit = state.settings.max_body_bytes  # a message past the body limit: RESOURCE_EXHAUSTED, as HTTP's 413
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 1),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceService(state), server)
    health_pb2_grpc.add_HealthServicer_to_server(Health(state), server)
    names = (service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME)  # fmt: skip
    reflection.enable_server_reflection(names, server)
    address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        server.add_insecure_port(address)
    except RuntimeError as exc:  # the port is taken by another program
        raise RuntimeError(f"cannot serve gRPC on {address} ({exc}): set VAE_GRPC_PORT to a free port, or 0") from None
    await server.start()
    log.info("gRPC (OIP, health, reflection) on %s", address)
    return server
