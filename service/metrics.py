"""Prometheus metrics, one registry per app (so tests can run several apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .batcher import BatchObserver

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
ROW_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("vae_requests", "HTTP requests by route and status", ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("vae_request_seconds", "HTTP request latency", ["endpoint"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.batch_rows = Histogram("vae_batch_rows", "rows per ORT run", ["model", "graph"], buckets=ROW_BUCKETS, registry=self.registry)
        self.batch_requests = Histogram("vae_batch_requests", "requests coalesced per ORT run", ["model", "graph"], buckets=ROW_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("vae_queue_rows", "rows waiting in a batcher's queue", ["model", "graph"], registry=self.registry)
        self.queue_wait = Histogram("vae_queue_wait_seconds", "time from enqueue to ORT run", ["model", "graph"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.dropped = Counter("vae_dropped_requests", "requests dropped from a queue before reaching ORT, by reason (deadline, cancelled)",
                               ["model", "graph", "reason"], registry=self.registry)
        self.in_flight = Gauge("vae_requests_in_flight", "HTTP requests being handled", registry=self.registry)

    def observer(self, model: str, graph: str) -> BatchObserver:
        return _Observer(self, model, graph)


class _Observer(BatchObserver):
    def __init__(self, metrics: Metrics, model: str, graph: str):
        self.rows = metrics.batch_rows.labels(model, graph)
        self.requests = metrics.batch_requests.labels(model, graph)
        self.depth = metrics.queue_depth.labels(model, graph)
        self.wait = metrics.queue_wait.labels(model, graph)
        self.drops = {reason: metrics.dropped.labels(model, graph, reason) for reason in ("deadline", "cancelled")}

    def batch(self, rows: int, jobs: int) -> None:
        self.rows.observe(rows)
        self.requests.observe(jobs)

    def queue_depth(self, rows: int) -> None:
        self.depth.set(rows)

    def queue_wait(self, seconds: float) -> None:
        self.wait.observe(seconds)

    def dropped(self, rows: int, reason: str) -> None:
        self.drops[reason].inc()
