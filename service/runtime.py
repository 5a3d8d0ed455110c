"""One model at run time: its onnxruntime sessions, a batcher per graph, and the warm-up.

Providers: CUDA first when it really works here, then CPU; the provider each session ended up
on is logged and reported in /models. ``load_model`` checks everything before a model serves.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import Executor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from . import anomaly
from .batcher import Batcher, bucket_sizes
from .errors import Conflict
from .jobs import Tensors
from .manifest import REQUIRED_GRAPHS, GraphSpec, Manifest, ManifestError, load_manifest
from .metrics import GraphStats, Metrics
from .noise import Noise
from .observers import FanOut
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


def open_session(
    path: Path, providers: list[str], options: ort.SessionOptions, cuda_device: int = 0
) -> ort.InferenceSession:
    cuda = {**CUDA_OPTIONS, "device_id": str(cuda_device)}
    with quiet_ort():
        return ort.InferenceSession(
            str(path), sess_options=options, providers=[(p, cuda) if p == CUDA else p for p in providers]
        )


def _dims(shape) -> list[int]:
    """ORT's shape (ints, or names/None for dynamic axes) in the manifest's terms (-1 for dynamic)."""
    return [d if isinstance(d, int) else -1 for d in shape]


def _compatible(actual: list[int], declared: list[int]) -> bool:
    """Same rank, and no axis where both are fixed and differ (ORT may not know an output's sizes)."""
    return len(actual) == len(declared) and all(a == -1 or d == -1 or a == d for a, d in zip(actual, declared))


def check_graph(session: ort.InferenceSession, spec: GraphSpec, path: Path) -> None:
    """The ONNX graph takes and gives what the manifest says: names, order and shapes."""
    for kind, actual, declared in (
        ("inputs", session.get_inputs(), spec.inputs),
        ("outputs", session.get_outputs(), spec.outputs),
    ):
        names = [t.name for t in actual]
        if (kind == "inputs" and names != list(declared)) or (kind == "outputs" and set(declared) - set(names)):
            raise ManifestError(f"{path}: {kind} {names} do not match the manifest's {list(declared)}")
        for tensor in actual:
            if tensor.name in declared and not _compatible(_dims(tensor.shape), declared[tensor.name]):
                raise ManifestError(
                    f"{path}: {tensor.name} has shape {_dims(tensor.shape)}, the manifest says {declared[tensor.name]}"
                )


def check_latent_dim(manifest: Manifest) -> None:
    """latent_dim agrees with the decoder's input and the encoder's outputs."""
    sizes = {
        "decoder z": manifest.graphs["decoder"].inputs["z"][-1],
        "encoder mean": manifest.graphs["encoder"].outputs["mean"][-1],
    }
    wrong = {k: v for k, v in sizes.items() if v != manifest.latent_dim}
    if wrong:
        raise ManifestError(f"manifest latent_dim {manifest.latent_dim} disagrees with the graphs: {wrong}")


def zero_inputs(spec: GraphSpec, rows: int) -> Tensors:
    """Zeros shaped as the manifest declares: ``rows`` on each batch axis, 1 on other dynamic axes (K)."""
    return {
        name: np.zeros(
            [rows if axis == spec.batch_axes[name] else max(size, 1) for axis, size in enumerate(shape)], np.float32
        )
        for name, shape in spec.inputs.items()
    }


@dataclass
class ModelRuntime:
    """One version of one model: its manifest, an ORT session and a batcher per graph.

    ``active`` counts the requests using it now: a version swapped out is closed only when none
    is left, so a request that started on it ends on it, never on a mix of versions.
    """

    name: str
    version: str
    path: Path  # the folder its manifest is in
    manifest: Manifest
    sessions: dict[str, ort.InferenceSession]
    provider: str
    batchers: dict[str, Batcher] = field(default_factory=dict)
    stats: dict[str, GraphStats] = field(default_factory=dict)  # per graph, for /v2/models/{m}/stats
    active: int = 0

    @property
    def latent_dim(self) -> int:
        return self.manifest.latent_dim

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.manifest.image_shape

    @property
    def image_grid(self) -> tuple[int, ...]:
        """An image's array shape in numpy/PIL order: (H, W) for grayscale, (H, W, 3) for colour."""
        h, w, c = self.image_shape
        return (h, w) if c == 1 else (h, w, c)

    def run_graph(self, graph: str, inputs: Tensors) -> Tensors:
        """Synchronous ORT run (called from the batcher's executor thread)."""
        session = self.sessions[graph]
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(names, inputs)))

    @contextmanager
    def in_use(self):
        self.active += 1
        try:
            yield self
        finally:
            self.active -= 1

    @property
    def idle(self) -> bool:
        """No request uses it, and nothing is queued or running in its batchers."""
        return self.active == 0 and not any(len(b.queue) or b.running for b in self.batchers.values())

    # ``deadline``: a time.perf_counter() value; still queued then, the request gets DeadlineExceeded.
    async def infer(self, graph: str, inputs: Tensors, weight: int = 1, deadline: float | None = None) -> Tensors:
        """One graph through its batcher (each row costs ``weight``): what OIP calls directly."""
        with self.in_use():
            return await self.batchers[graph].submit(inputs, weight=weight, deadline=deadline)

    async def encode(self, x: np.ndarray, eps: np.ndarray | Noise, deadline: float | None = None) -> Tensors:
        """q(z|x): mean, log_var (B, Z) from x (B, D); with K = len(eps) > 0 draws, also z (B, K, Z)."""
        with self.in_use():  # both graphs of one version
            out = await self.infer("encoder", {"x": x}, deadline=deadline)
            if len(eps) == 0:
                return out
            inputs = {"mean": out["mean"], "log_var": out["log_var"], "eps": eps}  # eps (K, B, Z)
            z = (await self.infer("reparameterize", inputs, weight=len(eps), deadline=deadline))["z"]  # (K, B, Z)
            return {**out, "z": np.ascontiguousarray(z.transpose(1, 0, 2))}  # (B, K, Z)

    async def decode(self, z: np.ndarray | Noise, deadline: float | None = None) -> Tensors:
        """E[x|z]: image (B, D) from z (B, Z), plus the likelihood's parameters (and z itself when it
        is a Noise: drawn in the batch)."""
        return await self.infer("decoder", {"z": z}, deadline=deadline)

    async def score(self, x: np.ndarray, eps: np.ndarray | Noise, deadline: float | None = None) -> Tensors:
        """x (B, D), eps (K, B, Z) -> elbo, reconstruction, kl, log_likelihood, gap, each (B,)."""
        out = await self.infer("score", {"x": x, "eps": eps}, weight=len(eps), deadline=deadline)
        out.pop("eps", None)  # a drawn ε comes back beside the outputs; the scores are the answer
        return out

    async def anomaly(self, x: np.ndarray, eps: np.ndarray | Noise, threshold: float, maps: bool = False,
                      deadline: float | None = None) -> Tensors:  # fmt: skip
        """The calibrated anomaly score of images x (B, D) with ε (K, B, Z): score, percentile, outlier,
        log_likelihood, each (B,), and ``statistics``, the five it is built from; with ``maps``,
        |x − E[x|z=μ]| per pixel (B, D)."""
        calibration = self.manifest.anomaly
        if calibration is None:
            raise Conflict(
                f"model {self.name!r} has no anomaly calibration: export it again (python -m training export, "
                f"or python -m training reexport {self.path})"
            )
        with self.in_use():  # all graphs of one version
            encoded, scores = await asyncio.gather(
                self.infer("encoder", {"x": x}, deadline=deadline),
                self.score(x, eps, deadline),
            )
            stats = anomaly.statistics(scores, encoded["mean"], x.reshape(-1, *self.image_grid), calibration["latent"])
            verdict = anomaly.judge(stats, calibration, threshold)
            out = {"score": verdict.score, "percentile": verdict.percentile, "outlier": verdict.outlier,
                   "log_likelihood": scores["log_likelihood"], "statistics": stats}  # fmt: skip
            if maps:
                reconstruction = (await self.infer("decoder", {"z": encoded["mean"]}, deadline=deadline))["image"]
                out["maps"] = np.abs(x - reconstruction)  # (B, D)
            return out

    async def close(self) -> None:
        """Stop the batchers and drop the sessions: their memory goes back with them."""
        await asyncio.gather(*(b.close() for b in self.batchers.values()))
        self.batchers.clear()  # their run closures refer back to this runtime: the cycle goes with them
        self.sessions.clear()

    def warm_up(self) -> int:
        """Run every graph once per batch shape its batcher can produce; returns the runs made.

        Without padding (CPU) one run of one row and one of a full batch: ORT's CPU kernels have no
        per-shape setup. The full batch, timed, is each batcher's first throughput estimate, so
        deadline admission has a measured cost before the first request.
        """
        runs = 0
        for graph, batcher in self.batchers.items():
            sizes = bucket_sizes(batcher.max_batch_rows) if batcher.pad_to_buckets else [1, batcher.max_batch_rows]
            for rows in sizes:
                inputs = zero_inputs(self.manifest.graphs[graph], rows)
                started = time.perf_counter()
                self.run_graph(graph, inputs)
                seconds = time.perf_counter() - started
                runs += 1
            batcher.throughput.observe(rows, seconds)  # the largest size, run last
        return runs


def make_batchers(runtime: ModelRuntime, settings: Settings, metrics: Metrics, executor: Executor) -> None:
    """A batcher per graph, sharing ``executor``; padded to buckets on CUDA (or when asked)."""
    pad = settings.pad_batches == "true" or (settings.pad_batches == "auto" and runtime.provider == CUDA)
    for graph in REQUIRED_GRAPHS:
        runtime.stats[graph] = GraphStats()
        runtime.batchers[graph] = Batcher(
            run=lambda inputs, g=graph: runtime.run_graph(g, inputs),
            batch_axes=runtime.manifest.graphs[graph].batch_axes,
            max_batch_rows=settings.max_batch_rows,
            max_delay_s=settings.max_delay_ms / 1000.0,
            max_queue_rows=settings.max_queue_rows,
            executor=executor,
            pad_to_buckets=pad,
            coalesce=settings.batching,
            max_concurrent_runs=settings.max_concurrent_runs,
            observer=FanOut(metrics.observer(runtime.name, graph), runtime.stats[graph]),
            name=f"{runtime.name}/{graph}",
        )


def load_model(
    name: str,
    model_dir: Path,
    version: str | None,
    providers: list[str],
    settings: Settings,
    metrics: Metrics,
    executor: Executor,
) -> ModelRuntime:
    """Manifest, sha256s, version, sessions, graph shapes, then batchers: any failure raises before it serves.

    ``version``: the numbered folder it came from (Triton's layout), which the manifest must agree
    with; None for a model folder that holds its manifest directly.
    """
    started = time.perf_counter()
    manifest = load_manifest(model_dir)
    if version is not None and manifest.version != version:
        raise ManifestError(
            f"{model_dir / 'manifest.json'}: version {manifest.version!r} in folder {version}/; export it with "
            f"--set version={version} or put it in folder {manifest.version}/"
        )
    options = session_options(settings)
    sessions = {}
    for graph in REQUIRED_GRAPHS:
        spec = manifest.graphs[graph]
        session = open_session(model_dir / spec.path, providers, options, settings.cuda_device)
        check_graph(session, spec, model_dir / spec.path)
        sessions[graph] = session
    check_latent_dim(manifest)
    actual = sessions["decoder"].get_providers()[0]
    if CUDA in providers and actual != CUDA:
        log.warning(
            "model %s: CUDA provider unavailable here (onnxruntime-gpu needs CUDA 13 + cuDNN 9); using %s",
            manifest.name,
            actual,
        )
    runtime = ModelRuntime(name, manifest.version, model_dir, manifest, sessions, actual)
    make_batchers(runtime, settings, metrics, executor)
    log.info(
        "model %s version %s loaded on %s (image %s, latent_dim=%d, likelihood=%s) in %.2fs",
        runtime.name,
        manifest.version,
        actual,
        list(manifest.image_shape),
        manifest.latent_dim,
        manifest.likelihood,
        time.perf_counter() - started,
    )
    return runtime
