"""What the batchers report: Prometheus metrics (one registry per app, so tests can run several apps
in one process), Triton-style statistics per graph, and, when tracing is on, spans of each
request's queue wait and of each batch run (``BatchTracing``)."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from .control import MULTIPROC_DIR
from .jobs import Job
from .observers import BatchObserver, FanOut
from .throughput import RunTiming
from .tracing import epoch_ns

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    """``counts_model_events``: whether this process counts model loads, refusals and unloads. Every
    worker process loads every version; one of them (the first) counts it, so a version counts once."""

    def __init__(self, counts_model_events: bool = True, tracer=None) -> None:
        self.counts_model_events = counts_model_events
        self.tracer = tracer  # with a tracer, each batcher's runs are traced too (service.tracing)
        self.registry = CollectorRegistry()
        self._request_children: dict[tuple[str, int], tuple] = {}  # bounded: route templates × statuses
        self.requests = Counter(
            "vae_requests", "HTTP requests by route and status", ["endpoint", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "vae_request_seconds", "HTTP request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry
        )
        self.batch_rows = Histogram(
            "vae_batch_rows", "rows per ORT run", ["model", "graph"], buckets=ROW_BUCKETS, registry=self.registry
        )
        self.batch_requests = Histogram(
            "vae_batch_requests",
            "requests coalesced per ORT run",
            ["model", "graph"],
            buckets=ROW_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "vae_queue_rows",
            "rows waiting in a batcher's queue",
            ["model", "graph"],
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.queue_wait = Histogram(
            "vae_queue_wait_seconds",
            "time from enqueue to ORT run",
            ["model", "graph"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.dropped = Counter(
            "vae_dropped_requests",
            "requests dropped from a queue before reaching ORT, by reason (deadline, cancelled)",
            ["model", "graph", "reason"],
            registry=self.registry,
        )
        self.shed = Counter(
            "vae_shed_requests",
            "requests refused at admission with 503, by reason (queue_full, late: expected after their deadline)",
            ["model", "graph", "reason"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "vae_requests_in_flight", "HTTP requests being handled", registry=self.registry, multiprocess_mode="livesum"
        )
        self.model_loads = Counter(
            "vae_model_loads", "model versions loaded, refused or unloaded", ["model", "result"], registry=self.registry
        )

    def exposition(self) -> bytes:
        """The text a scrape gets: under worker processes (prometheus_client's multiprocess directory
        set), every live and past worker's samples summed; else this process's registry."""
        if os.environ.get(MULTIPROC_DIR):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)

    def model_event(self, model: str, result: str) -> None:
        """A model version loaded, refused or unloaded."""
        if self.counts_model_events:
            self.model_loads.labels(model, result).inc()

    def count_request(self, endpoint: str, status: int, seconds: float) -> None:
        """One HTTP request by route template and status; the labelled children are looked up once."""
        key = (endpoint, status)
        children = self._request_children.get(key)
        if children is None:
            children = self.requests.labels(endpoint, str(status)), self.latency.labels(endpoint)
            self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observer(self, model: str, graph: str) -> BatchObserver:
        if self.tracer is None:
            return _Observer(self, model, graph)
        return FanOut(_Observer(self, model, graph), BatchTracing(self.tracer, model, graph))


class _Observer(BatchObserver):
    def __init__(self, metrics: Metrics, model: str, graph: str):
        self.rows = metrics.batch_rows.labels(model, graph)
        self.requests = metrics.batch_requests.labels(model, graph)
        self.depth = metrics.queue_depth.labels(model, graph)
        self.wait = metrics.queue_wait.labels(model, graph)
        self.drops = {reason: metrics.dropped.labels(model, graph, reason) for reason in ("deadline", "cancelled")}
        self.sheds = {reason: metrics.shed.labels(model, graph, reason) for reason in ("queue_full", "late")}

    def batch(self, rows: int, jobs: int) -> None:
        self.rows.observe(rows)
        self.requests.observe(jobs)

    def queue_depth(self, rows: int) -> None:
        self.depth.set(rows)

    def queue_wait(self, seconds: float) -> None:
        self.wait.observe(seconds)

    def dropped(self, rows: int, reason: str) -> None:
        self.drops[reason].inc()

    def shed(self, rows: int, reason: str) -> None:
        self.sheds[reason].inc()


def _duration(count: int = 0, ns: int = 0) -> dict:
    return {"count": count, "ns": ns}


@dataclass
class GraphStats(BatchObserver):
    """Triton's statistics extension for one graph, fed by its batcher (REST and OIP traffic alike)."""

    inference_count: int = 0  # rows
    execution_count: int = 0  # ORT runs
    last_inference_ms: int = 0
    totals: dict[str, list[int]] = field(
        default_factory=lambda: {k: [0, 0] for k in ("success", "fail", "queue", "compute_infer")}
    )
    batches: dict[int, list[int]] = field(default_factory=dict)  # batch size -> [runs, compute ns]

    def queue_wait(self, seconds: float) -> None:
        self._add("queue", 1, seconds)

    def run_done(self, rows: int, compute_s: float, request_s: list[float], ok: bool) -> None:
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)
        self._add("compute_infer", len(request_s), compute_s * len(request_s))
        self._add("success" if ok else "fail", len(request_s), sum(request_s))
        if ok:
            self.inference_count += rows
        runs = self.batches.setdefault(rows, [0, 0])
        runs[0] += 1
        runs[1] += int(compute_s * 1e9)

    def _add(self, key: str, count: int, seconds: float) -> None:
        self.totals[key][0] += count
        self.totals[key][1] += int(seconds * 1e9)

    def report(self, name: str, version: str) -> dict:
        stats = {key: _duration(*value) for key, value in self.totals.items()}
        stats |= {"compute_input": _duration(), "compute_output": _duration()}
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": stats,
            "batch_stats": [
                {
                    "batch_size": size,
                    "compute_input": _duration(),
                    "compute_output": _duration(),
                    "compute_infer": _duration(runs, ns),
                }
                for size, (runs, ns) in sorted(self.batches.items())
            ],
        }


def merge_reports(reports: list[dict]) -> dict:
    """One graph's statistics from several worker processes, summed as if one process had served all."""
    merged = {key: value for key, value in reports[0].items() if key not in ("inference_stats", "batch_stats")}
    merged["last_inference"] = max(r["last_inference"] for r in reports)
    merged["inference_count"] = sum(r["inference_count"] for r in reports)
    merged["execution_count"] = sum(r["execution_count"] for r in reports)
    merged["inference_stats"] = {
        key: _sum_durations(r["inference_stats"][key] for r in reports) for key in reports[0]["inference_stats"]
    }
    batches: dict[int, list[dict]] = {}
    for report in reports:
        for batch in report["batch_stats"]:
            batches.setdefault(batch["batch_size"], []).append(batch)
    merged["batch_stats"] = [
        {"batch_size": size, **{key: _sum_durations(b[key] for b in group) for key in group[0] if key != "batch_size"}}
        for size, group in sorted(batches.items())
    ]
    return merged


def _sum_durations(durations) -> dict:
    total = _duration()
    for d in durations:
        total["count"] += d["count"]
        total["ns"] += d["ns"]
    return total


class BatchTracing(BatchObserver):
    """One batcher's spans: each request's queue wait, and each batch run with its ONNX run."""

    def __init__(self, tracer, model: str, graph: str):
        from opentelemetry import trace

        self.tracer, self.trace = tracer, trace
        self.attributes = {"vae.model": model, "vae.graph": graph}

    def admitted(self, jobs: list[Job]) -> None:
        span = self.trace.get_current_span()
        if not span.is_recording():  # no request span, or one the sampler left out: nothing to trace
            return
        for job in jobs:
            job.trace = span.get_span_context()
        rows = sum(j.rows for j in jobs)
        span.set_attribute("vae.rows", rows + (span.attributes or {}).get("vae.rows", 0))

    def ran(self, jobs: list[Job], started: float, timing: RunTiming, ok: bool) -> None:
        traced = [j for j in jobs if j.trace is not None]
        if not traced:
            return
        from opentelemetry.trace import Link, Status, StatusCode, set_span_in_context

        for job in traced:  # the wait, as a child of its request's span
            parent = set_span_in_context(self.trace.NonRecordingSpan(job.trace))
            wait = self.tracer.start_span("queue", context=parent, start_time=epoch_ns(job.enqueued_at),
                                          attributes={**self.attributes, "vae.rows": job.rows})  # fmt: skip
            wait.end(end_time=epoch_ns(started))
        attributes = {**self.attributes, "vae.rows": sum(j.rows for j in jobs), "vae.requests": len(jobs)}
        run = self.tracer.start_span("batch", context=set_span_in_context(self.trace.INVALID_SPAN),
                                     links=[Link(j.trace) for j in traced], start_time=epoch_ns(started),
                                     attributes=attributes)  # fmt: skip
        if timing.began is not None:
            ort = self.tracer.start_span("onnxruntime.run", context=set_span_in_context(run),
                                         start_time=epoch_ns(timing.began), attributes=attributes)  # fmt: skip
            ort.end(end_time=epoch_ns(timing.ended if timing.ended is not None else time.perf_counter()))
        if not ok:
            run.set_status(Status(StatusCode.ERROR, "the run failed"))
        run.end()
