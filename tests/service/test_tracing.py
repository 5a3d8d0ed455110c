"""Traces: the spans a request makes (in memory), and what reaches a real OTLP/HTTP receiver."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind

from benchmarks.otlp_sink import start_sink
from service import app as app_module
from service import tracing
from service.settings import Settings
from tests.contract.conftest import ROOT, InProcessClient, start_server

TRACE_ID, PARENT_ID = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def test_tracing_is_off_unless_an_exporter_is_named():
    assert tracing.tracer_from_environment({}) is None
    assert tracing.tracer_from_environment({"OTEL_TRACES_EXPORTER": "none"}) is None
    assert tracing.tracer_from_environment({"OTEL_TRACES_EXPORTER": "console"}) is not None
    with pytest.raises(ValueError, match="zipkin is not supported"):
        tracing.exporters_from_environment({"OTEL_TRACES_EXPORTER": "zipkin"})
    with pytest.raises(ValueError, match="OTEL_EXPORTER_OTLP_PROTOCOL=http/json"):
        tracing.exporters_from_environment({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"})


@pytest.fixture(scope="module")
def traced():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    patch = pytest.MonkeyPatch()
    patch.setattr(app_module, "tracer_from_environment", lambda: provider.get_tracer("test"))
    client = InProcessClient(app_module.create_app(Settings(model_dir=ROOT / "models")))
    while client.get("/health/ready").status_code != 200:
        time.sleep(0.05)
    yield client, exporter
    client.close()
    patch.undo()


def spans_of(exporter, trace_id: int) -> dict[str, list]:
    found: dict[str, list] = {}
    for span in exporter.get_finished_spans():
        if span.context.trace_id == trace_id or any(link.context.trace_id == trace_id for link in span.links):
            found.setdefault(span.name, []).append(span)
    return found


def test_a_request_joins_the_callers_trace_with_its_queue_wait_and_its_batch_run(traced):
    client, exporter = traced
    exporter.clear()
    answer = client.post(
        "/sample", json={"n": 3, "seed": 1}, headers={"traceparent": TRACEPARENT, "x-request-id": "r-9"}
    )
    assert answer.status_code == 200
    spans = spans_of(exporter, int(TRACE_ID, 16))
    (server,) = spans["POST /sample"]
    assert server.kind == SpanKind.SERVER and server.parent.span_id == int(PARENT_ID, 16)
    assert server.attributes["vae.model"] == "fashion-mnist" and server.attributes["vae.model_version"] == "1"
    assert server.attributes["vae.rows"] == 3 and server.attributes["http.response.status_code"] == 200
    assert server.attributes["vae.request_id"] == "r-9" and server.attributes["http.route"] == "/sample"
    (queue,) = spans["queue"]
    assert queue.parent.span_id == server.context.span_id and queue.attributes["vae.graph"] == "decoder"
    (batch,) = spans["batch"]
    assert batch.parent is None and batch.context.trace_id != server.context.trace_id  # a root of its own...
    assert server.context.span_id in {link.context.span_id for link in batch.links}  # ...linked to its requests
    (run,) = [s for s in exporter.get_finished_spans() if s.name == "onnxruntime.run" and s.parent == batch.context]
    assert server.start_time <= queue.start_time <= queue.end_time <= batch.start_time <= run.start_time
    assert run.end_time <= batch.end_time <= server.end_time


def test_one_batch_span_links_every_request_it_served(traced):
    client, exporter = traced
    exporter.clear()

    async def many():
        ids = [f"{i + 1:032x}" for i in range(8)]
        requests = [
            client.client.post(
                "/decode", json={"latents": [[0.0] * 32]}, headers={"traceparent": f"00-{t}-{PARENT_ID}-01"}
            )
            for t in ids
        ]

        return ids, await asyncio.gather(*requests)

    ids, answers = client.wait(many())
    assert {a.status_code for a in answers} == {200}
    batches = [s for s in exporter.get_finished_spans() if s.name == "batch" and s.attributes["vae.graph"] == "decoder"]
    linked = {link.context.trace_id for b in batches for link in b.links}
    assert {int(t, 16) for t in ids} <= linked
    assert sum(b.attributes["vae.requests"] for b in batches) == 8 and len(batches) < 8  # coalesced


def test_a_client_error_is_not_a_server_error_on_the_span(traced):
    client, exporter = traced
    exporter.clear()
    assert client.post("/sample", json={"n": -1}, headers={"traceparent": TRACEPARENT}).status_code == 422
    (server,) = spans_of(exporter, int(TRACE_ID, 16))["POST /sample"]
    assert server.attributes["http.response.status_code"] == 422 and server.status.is_unset


def test_requests_the_sampler_leaves_out_are_served_and_make_no_spans(monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_OFF)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(app_module, "tracer_from_environment", lambda: provider.get_tracer("test"))
    client = InProcessClient(app_module.create_app(Settings(model_dir=ROOT / "models", warmup=False)))
    try:
        for headers in ({}, {"traceparent": f"00-{TRACE_ID}-{PARENT_ID}-00"}):
            assert client.post("/sample", json={"n": 2}, headers=headers).status_code == 200
            assert (
                client.post("/elbo", json={"inputs": [[0.0] * 784], "samples": 4}, headers=headers).status_code == 200
            )
    finally:
        client.close()
    assert exporter.get_finished_spans() == ()


def decoded(bodies: list[bytes]) -> list[ExportTraceServiceRequest]:
    messages = []
    for body in list(bodies):
        message = ExportTraceServiceRequest()
        message.ParseFromString(body)
        messages.append(message)
    return messages


def spans_in(messages: list[ExportTraceServiceRequest]) -> list:
    return [s for m in messages for r in m.resource_spans for ss in r.scope_spans for s in ss.spans]


@pytest.mark.slow
def test_traces_reach_a_real_otlp_receiver_configured_by_the_standard_variables(tmp_path, monkeypatch):
    bodies: list[bytes] = []
    receiver = start_sink(kept=bodies)  # each export's body, decoded below with opentelemetry-proto
    environment = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_port}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": "vae-test",
        "OTEL_TRACES_SAMPLER": "parentbased_always_on",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    server, url = start_server(ROOT / "models", tmp_path / "server.log", workers=2)
    expected = {"POST /sample", "queue", "batch", "onnxruntime.run"}
    try:
        for _ in range(4):
            headers = {"traceparent": TRACEPARENT}
            assert httpx.post(f"{url}/sample", json={"n": 1}, headers=headers, timeout=30).status_code == 200
        deadline, names = time.monotonic() + 20, set()
        while time.monotonic() < deadline and not expected <= names:
            time.sleep(0.2)
            names = {s.name for s in spans_in(decoded(bodies))}
    finally:
        server.stop()
        receiver.shutdown()
        receiver.server_close()
    messages = decoded(bodies)
    assert expected <= {s.name for s in spans_in(messages)}
    services = {a.value.string_value for m in messages for r in m.resource_spans for a in r.resource.attributes
                if a.key == "service.name"}  # fmt: skip
    assert services == {"vae-test"}
    joined = [s for s in spans_in(messages) if s.name == "POST /sample"]
    assert joined and all(s.trace_id.hex() == TRACE_ID and s.parent_span_id.hex() == PARENT_ID for s in joined)
