"""OpenTelemetry traces: a server span per request, its wait in a batcher's queue, and the batch
run that served it, with the ONNX run as the run's child.

Off unless configured, by OpenTelemetry's own variables: ``OTEL_TRACES_EXPORTER`` (``otlp`` or
``console``; unset or ``none``: no tracing, and nothing of it on the request path), and what the
SDK reads itself: ``OTEL_EXPORTER_OTLP_ENDPOINT`` / ``..._TRACES_ENDPOINT``,
``OTEL_EXPORTER_OTLP_PROTOCOL`` (``http/protobuf``, the default, or ``grpc``), ``OTEL_SERVICE_NAME``,
``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER`` and its ``_ARG``, ``OTEL_BSP_*``.

A request joins its caller's trace (W3C ``traceparent``). A batch run serves many requests, so its
span is a root of its own, linked to every request span it served (span links), as a batch is in
Triton's and Kafka's traces. Spans of the queue wait and the run are made after the run, with the
times the batcher measured: the executor thread never calls the SDK.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

EXPORTERS = ("otlp", "console")
PROTOCOLS = ("", "http/protobuf", "grpc")  # "": the SDK's default, http/protobuf
_EPOCH_OFFSET_NS = time.time_ns() - time.perf_counter_ns()  # perf_counter seconds -> epoch nanoseconds


def epoch_ns(perf_s: float) -> int:
    return _EPOCH_OFFSET_NS + int(perf_s * 1e9)


def exporters_from_environment(environ: Mapping[str, str] = os.environ) -> list[str]:
    """The exporters OTEL_TRACES_EXPORTER names (none: tracing off); ValueError for one not supported."""
    exporters = [e.strip() for e in environ.get("OTEL_TRACES_EXPORTER", "none").split(",") if e.strip()]
    exporters = [e for e in exporters if e != "none"]
    unknown = [e for e in exporters if e not in EXPORTERS]
    if unknown:
        raise ValueError(f"OTEL_TRACES_EXPORTER={','.join(unknown)} is not supported: use {' or '.join(EXPORTERS)}")
    if "otlp" in exporters and _protocol(environ) not in PROTOCOLS:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL={_protocol(environ)} is not supported: use http/protobuf or grpc"
        )
    return exporters


def _protocol(environ: Mapping[str, str]) -> str:
    return environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", ""))


def tracer_from_environment(environ: Mapping[str, str] = os.environ):
    """The service's tracer as the OTEL_* variables configure it, or None when tracing is off."""
    exporters = exporters_from_environment(environ)
    if not exporters:
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    provider = TracerProvider(resource=Resource.create({"service.name": environ.get("OTEL_SERVICE_NAME", "vae-serve")}))
    for name in exporters:
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter() if name == "console" else _otlp(environ)))
    log.info("tracing on: %s", ", ".join(exporters))
    return provider.get_tracer("vae-serve")


def _otlp(environ: Mapping[str, str]):
    """The SDK's OTLP exporter for the protocol asked for; it reads its endpoint and headers itself."""
    if _protocol(environ) == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def shutdown(tracer) -> None:
    """Export what is still buffered (at the end of the lifespan)."""
    from opentelemetry import trace

    provider = getattr(tracer, "_tracer_provider", None) or trace.get_tracer_provider()
    if hasattr(provider, "shutdown"):
        provider.shutdown()


def server_span(tracer, name: str, carrier: Mapping[str, str], attributes: dict):
    """A SERVER span that joins the caller's trace (``traceparent`` in ``carrier``), made current."""
    from opentelemetry.propagate import extract
    from opentelemetry.trace import SpanKind

    # The outcome is set from the answer (a 4xx is the caller's, not a server error), not from exceptions.
    return tracer.start_as_current_span(name, context=extract(carrier), kind=SpanKind.SERVER, attributes=attributes,
                                        record_exception=False, set_status_on_exception=False)  # fmt: skip


ANSWER_HEADERS = {b"x-model": "vae.model", b"x-model-version": "vae.model_version"}


def describe_answer(span, status: int, headers: list[tuple[bytes, bytes]]) -> None:
    """The outcome on the request's span: its status, and which model and version answered."""
    span.set_attribute("http.response.status_code", status)
    for name, value in headers:
        if (attribute := ANSWER_HEADERS.get(name.lower())) is not None:
            span.set_attribute(attribute, value.decode("latin1"))
    if status >= 500:
        from opentelemetry.trace import Status, StatusCode

        span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))
