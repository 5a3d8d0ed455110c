"""onnxruntime sessions for every model in the model dir, their batchers, and the warm-up.

Providers: CUDA first when it really works here, then CPU; the provider each session ended up
on is logged and reported in /models. A model that fails to load is refused with one log line;
the others are served.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .batcher import Batcher, FanOut, Tensors, bucket_sizes
from .manifest import REQUIRED_GRAPHS, GraphSpec, Manifest, ManifestError, load_manifest
from .metrics import Metrics
from .oip import GraphStats
from .settings import Settings

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
# HEURISTIC: no multi-second cuDNN benchmark on each new input shape.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "HEURISTIC"}


@contextmanager
def quiet_ort():
    """ORT prints a banner when the CUDA provider's libraries are missing; we log one line instead."""
    ort.set_default_logger_severity(4)
    try:
        yield
    finally:
        ort.set_default_logger_severity(2)


def requested_providers(settings: Settings) -> list[str]:
    available = ort.get_available_providers()
    wanted = settings.provider_list or ([CUDA, CPU] if CUDA in available else [CPU])
    unknown = [p for p in wanted if p not in available]
    if unknown:
        log.warning("providers %s are not in this onnxruntime build (available: %s); skipped", unknown, available)
    return [p for p in wanted if p in available] or [CPU]


def session_options(settings: Settings) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = settings.ort_intra_op_threads
    options.inter_op_num_threads = settings.ort_inter_op_threads
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle ORT threads sleep instead of spinning: a spinning pool takes the cores the event loop
    # and the other sessions need between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(path: Path, providers: list[str], options: ort.SessionOptions) -> ort.InferenceSession:
    with quiet_ort():
        return ort.InferenceSession(
            str(path), sess_options=options,
            providers=[(p, CUDA_OPTIONS) if p == CUDA else p for p in providers],
        )


def _dims(shape) -> list[int]:
    """ORT's shape (ints, or names/None for dynamic axes) in the manifest's terms (-1 for dynamic)."""
    return [d if isinstance(d, int) else -1 for d in shape]


def _compatible(actual: list[int], declared: list[int]) -> bool:
    """Same rank, and no axis where both are fixed and differ (ORT may not know an output's sizes)."""
    return len(actual) == len(declared) and all(a == -1 or d == -1 or a == d for a, d in zip(actual, declared))


def check_graph(session: ort.InferenceSession, spec: GraphSpec, path: Path) -> None:
    """The ONNX graph takes and gives what the manifest says: names, order and shapes."""
    for kind, actual, declared in (("inputs", session.get_inputs(), spec.inputs), ("outputs", session.get_outputs(), spec.outputs)):
        names = [t.name for t in actual]
        if (kind == "inputs" and names != list(declared)) or (kind == "outputs" and set(declared) - set(names)):
            raise ManifestError(f"{path}: {kind} {names} do not match the manifest's {list(declared)}")
        for tensor in actual:
            if tensor.name in declared and not _compatible(_dims(tensor.shape), declared[tensor.name]):
                raise ManifestError(f"{path}: {tensor.name} has shape {_dims(tensor.shape)}, the manifest says {declared[tensor.name]}")


def check_latent_dim(manifest: Manifest) -> None:
    """latent_dim agrees with the decoder's input and the encoder's outputs."""
    sizes = {"decoder z": manifest.graphs["decoder"].inputs["z"][-1],
             "encoder mean": manifest.graphs["encoder"].outputs["mean"][-1]}
    wrong = {k: v for k, v in sizes.items() if v != manifest.latent_dim}
    if wrong:
        raise ManifestError(f"manifest latent_dim {manifest.latent_dim} disagrees with the graphs: {wrong}")


def zero_inputs(spec: GraphSpec, rows: int) -> Tensors:
    """Zeros shaped as the manifest declares: ``rows`` on each batch axis, 1 on other dynamic axes (K)."""
    return {
        name: np.zeros([rows if axis == spec.batch_axes[name] else max(size, 1) for axis, size in enumerate(shape)], np.float32)
        for name, shape in spec.inputs.items()
    }


@dataclass
class ModelRuntime:
    """One model: its manifest, an ORT session and a batcher per graph."""

    name: str
    manifest: Manifest
    sessions: dict[str, ort.InferenceSession]
    provider: str
    batchers: dict[str, Batcher] = field(default_factory=dict)
    stats: dict[str, GraphStats] = field(default_factory=dict)  # per graph, for /v2/models/{m}/stats

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    def run_graph(self, graph: str, inputs: Tensors) -> Tensors:
        """Synchronous ORT run (called from the batcher's executor thread)."""
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    # ``deadline``: a time.perf_counter() value; still queued then, the request gets DeadlineExceeded.
    async def encode(self, x: np.ndarray, deadline: float | None = None) -> Tensors:  # (B, 784) -> mean, log_var (B, Z)
        return await self.batchers["encoder"].submit({"x": x}, deadline=deadline)

    async def decode(self, z: np.ndarray, deadline: float | None = None) -> Tensors:  # (B, Z) -> image (B, 784), ...
        return await self.batchers["decoder"].submit({"z": z}, deadline=deadline)

    async def reparameterize(self, mean: np.ndarray, log_var: np.ndarray, eps: np.ndarray, deadline: float | None = None) -> np.ndarray:
        inputs = {"mean": mean, "log_var": log_var, "eps": eps}
        out = await self.batchers["reparameterize"].submit(inputs, weight=eps.shape[0], deadline=deadline)
        return out["z"]  # (K, B, Z)

    async def score(self, x: np.ndarray, eps: np.ndarray, deadline: float | None = None) -> Tensors:  # (B, 784), (K, B, Z) -> 4 × (B,)
        return await self.batchers["score"].submit({"x": x, "eps": eps}, weight=eps.shape[0], deadline=deadline)

    def warm_up(self) -> int:
        """Run every graph once per batch shape its batcher can produce; returns the runs made.

        Without padding (CPU) one run per graph: ORT's CPU kernels have no per-shape setup, and
        running every size would only grow each session's memory arena to its largest batch.
        """
        runs = 0
        for graph, batcher in self.batchers.items():
            for rows in bucket_sizes(batcher.max_batch_rows) if batcher.pad_to_buckets else [1]:
                self.run_graph(graph, zero_inputs(self.manifest.graphs[graph], rows))
                runs += 1
        return runs


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

    def load_all(self) -> None:
        root = self.settings.model_dir
        manifests = sorted(root.glob("*/manifest.json")) if root.is_dir() else []
        if not manifests:
            log.error("no models found: %s has no */manifest.json", root.resolve())
        providers = requested_providers(self.settings)
        for path in manifests:
            name = path.parent.name
            try:
                self.models[name] = self._load(path.parent, providers)
            except Exception as exc:  # any failure refuses this model only; the others still serve
                reason = str(exc).splitlines()[0]
                self.refused[name] = reason
                log.error("model %s refused: %s", name, reason)
        if self.default_model not in self.models:
            log.warning("default model %r is not being served (served: %s)", self.default_model, sorted(self.models))

    def _load(self, model_dir: Path, providers: list[str]) -> ModelRuntime:
        started = time.perf_counter()
        manifest = load_manifest(model_dir)
        options = session_options(self.settings)
        sessions = {}
        for graph in REQUIRED_GRAPHS:
            spec = manifest.graphs[graph]
            session = open_session(model_dir / spec.path, providers, options)
            check_graph(session, spec, model_dir / spec.path)
            sessions[graph] = session
        check_latent_dim(manifest)
        actual = sessions["decoder"].get_providers()[0]
        if CUDA in providers and actual != CUDA:
            log.warning("model %s: CUDA provider unavailable here (onnxruntime-gpu needs CUDA 13 + cuDNN 9); using %s",
                        manifest.name, actual)
        runtime = ModelRuntime(model_dir.name, manifest, sessions, actual)
        pad = self.settings.pad_batches == "true" or (self.settings.pad_batches == "auto" and actual == CUDA)
        for graph in REQUIRED_GRAPHS:
            runtime.stats[graph] = GraphStats()
            runtime.batchers[graph] = Batcher(
                run=lambda inputs, g=graph: runtime.run_graph(g, inputs),
                batch_axes=manifest.graphs[graph].batch_axes,
                max_batch_rows=self.settings.max_batch_rows,
                max_delay_s=self.settings.max_delay_ms / 1000.0,
                max_queue_rows=self.settings.max_queue_rows,
                executor=self.executor,
                pad_to_buckets=pad,
                coalesce=self.settings.batching,
                max_concurrent_runs=self.settings.max_concurrent_runs,
                observer=FanOut(self.metrics.observer(model_dir.name, graph), runtime.stats[graph]),
                name=f"{model_dir.name}/{graph}",
            )
        log.info("model %s v%s loaded on %s (latent_dim=%d, likelihood=%s) in %.2fs", runtime.name, manifest.version,
                 actual, manifest.latent_dim, manifest.likelihood, time.perf_counter() - started)
        return runtime

    def warm_up(self) -> None:
        started = time.perf_counter()
        runs = sum(model.warm_up() for model in self.models.values())
        self.ready = True
        log.info("warm-up done: %d runs over %d models in %.2fs; ready", runs, len(self.models), time.perf_counter() - started)

    async def close(self) -> None:
        for model in self.models.values():
            await asyncio.gather(*(b.close() for b in model.batchers.values()))
        self.executor.shutdown(wait=False, cancel_futures=True)
