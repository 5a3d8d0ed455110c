"""Export a trained VAE as four ONNX graphs, check them against torch, write the manifest.

- ``encoder.onnx``: x (B, D) -> mean, log_var (B, Z)   (D = H·W·C of the manifest's image_shape)
- ``decoder.onnx``: z (B, Z) -> image (B, D) = E[x|z], plus the likelihood's parameter
- ``score.onnx``:   x (B, D), eps (K, B, Z) -> elbo, reconstruction, kl, log_likelihood, gap (B,)
- ``reparameterize.onnx``: mean, log_var (B, Z), eps (K, B, Z) -> z (K, B, Z), no weights
- ``weights.bin``: the graphs' weights as ONNX external data, each tensor stored once

The score graph is traced from ``objective.evidence``: the service runs the math, never re-types it.
``reexport`` rebuilds the torch model from a served model's own graphs and exports it again, so
a shipped model moves to a new manifest layout with its weights and metrics unchanged (bits/dim,
if the manifest lacks it, measured on the test split as the evaluation does).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import subprocess
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from . import objective
from .calibrate import calibrate
from .config import Config
from .model import VAE, resolve_architecture
from .served import load_served_model
from .train import load_checkpoint, load_data, measured_bits_per_dim, prepare_eval_images

log = logging.getLogger(__name__)

MANIFEST_VERSION = 2  # 2: image_shape [H, W, C], and gap among the score graph's outputs
MAX_K_PARITY = 3


class ExportError(RuntimeError):
    """The exported graphs disagree with torch beyond the tolerance."""


class EncoderGraph(nn.Module):
    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, x):  # (B, 784) -> (B, Z), (B, Z)
        return self.model.encoder(x)


class DecoderGraph(nn.Module):
    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, z):  # (B, Z) -> image (B, D), then logits or log_scale (B, D)
        return objective.decoder_outputs(self.model.cfg.likelihood, self.model.decoder(z), self.model.log_scale)


class ScoreGraph(nn.Module):
    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, x, eps):  # (B, D), (K, B, Z) -> 5 × (B,)
        return tuple(self.model.evidence(x, eps))


class ReparameterizeGraph(nn.Module):
    """No weights: z = μ + σ ⊙ ε from objective.py, so the service samples q(z|x) without re-typing it."""

    def forward(self, mean, log_var, eps):  # (B, Z), (B, Z), (K, B, Z) -> (K, B, Z)
        return objective.reparameterize(mean, log_var, eps)


def graph_specs(model: VAE) -> dict[str, dict]:
    """Names, shapes (−1: a dynamic axis) and batch axes of each graph's inputs and outputs."""
    z, size = model.cfg.latent_dim, model.image_size
    second = objective.PARAMETER[model.cfg.likelihood]
    specs = {
        "encoder": {
            "inputs": {"x": [-1, size]},
            "outputs": {"mean": [-1, z], "log_var": [-1, z]},
            "batch_axes": {"x": 0},
        },
        "decoder": {
            "inputs": {"z": [-1, z]},
            "outputs": {"image": [-1, size], second: [-1, size]},
            "batch_axes": {"z": 0},
        },
        "reparameterize": {
            "inputs": {"mean": [-1, z], "log_var": [-1, z], "eps": [-1, -1, z]},
            "outputs": {"z": [-1, -1, z]},
            "batch_axes": {"mean": 0, "log_var": 0, "eps": 1, "z": 1},
        },
        "score": {
            "inputs": {"x": [-1, size], "eps": [-1, -1, z]},
            "outputs": {name: [-1] for name in objective.Evidence._fields},
            "batch_axes": {"x": 0, "eps": 1},
        },
    }
    for spec in specs.values():  # every tensor's batch axis, listed: the service splits batches by it
        spec["batch_axes"] = {name: spec["batch_axes"].get(name, 0) for name in (*spec["inputs"], *spec["outputs"])}
    return specs


def _export_graph(module: nn.Module, example: tuple, spec: dict, path: Path, opset: int) -> None:
    dynamic_axes = {
        name: {i: f"{name}_dim{i}" for i, d in enumerate(shape) if d == -1}
        for name, shape in {**spec["inputs"], **spec["outputs"]}.items()
    }
    for name, axis in spec["batch_axes"].items():
        dynamic_axes[name][axis] = "batch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            example,
            str(path),
            input_names=list(spec["inputs"]),
            output_names=list(spec["outputs"]),
            dynamic_axes=dynamic_axes,
            opset_version=opset,
            dynamo=False,
        )


WEIGHTS_FILE = "weights.bin"
INLINE_BYTES = 1024  # tensors smaller than this stay inside their graph


def share_weights(model_dir: Path, graphs: list[str]) -> None:
    """Move the graphs' initializers into one ``weights.bin`` (ONNX external data), each distinct
    tensor stored once: the score graph holds the encoder's and decoder's weights again, and
    this halves the model's size on disk and in git."""
    import onnx
    from onnx import external_data_helper, numpy_helper

    stored: dict[str, tuple[int, int]] = {}
    with (model_dir / WEIGHTS_FILE).open("wb") as blob:
        for graph in graphs:
            path = model_dir / f"{graph}.onnx"
            proto = onnx.load(str(path))
            for tensor in proto.graph.initializer:
                data = tensor.raw_data or numpy_helper.to_array(tensor).tobytes()
                if len(data) < INLINE_BYTES:
                    continue
                key = hashlib.sha256(data).hexdigest()
                if key not in stored:
                    blob.write(b"\0" * (-blob.tell() % 64))  # aligned, so onnxruntime can map it
                    stored[key] = (blob.tell(), len(data))
                    blob.write(data)
                offset, length = stored[key]
                tensor.raw_data = data
                external_data_helper.set_external_data(tensor, location=WEIGHTS_FILE, offset=offset, length=length)
                tensor.data_location = onnx.TensorProto.EXTERNAL
                for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data"):
                    tensor.ClearField(field)
            path.write_bytes(proto.SerializeToString())


def _parity(module: nn.Module, path: Path, inputs: dict[str, np.ndarray]) -> tuple[float, float]:
    """(max abs error, max error relative to 1 + |torch value|) of onnxruntime against torch.

    Scores are sums over every pixel of values in the hundreds of nats, where float32 rounding
    alone is ~1e-4 absolute; the relative form is what the tolerance bounds. Per-input scores
    (1-D outputs) are scaled by the largest score of the same input: the gap is small, but it is
    computed from log-weights of that size and inherits their rounding.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in inputs.values()))
    want = want if isinstance(want, tuple) else (want,)
    want = [w.detach().numpy() for w in want]
    scales = [1.0 + np.abs(w) for w in want]
    if all(w.ndim == 1 for w in want):
        scales = [1.0 + np.max(np.abs(want), axis=0)] * len(want)
    errors = [(np.abs(g - w), scale) for g, w, scale in zip(got, want, scales)]
    return max(float(e.max()) for e, _ in errors), max(float((e / s).max()) for e, s in errors)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10
        ).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def export_model(run_dir: Path, model_dir: Path, command: str | None = None, parity_seed: int = 1234) -> dict:
    """Write the best checkpoint's graphs and manifest.json into ``model_dir``; raise if parity is out of tolerance."""
    best, eval_path = run_dir / "best.pt", run_dir / "eval.json"
    if not best.is_file():
        raise FileNotFoundError(f"{best} not found: train first")
    if not eval_path.is_file():
        raise FileNotFoundError(f"{eval_path} not found: run `evaluate` before `export`")
    cfg, model, ckpt = load_checkpoint(best)
    record = {
        "best_epoch": ckpt.get("best_epoch"),
        "epochs_run": ckpt.get("epoch"),
        "best_val_bound": ckpt.get("best_val_bound"),  # L_K with the training's K (the ELBO when K = 1)
    }
    if ckpt.get("initialized_from"):  # the served model whose weights the run started from
        record["initialized_from"] = ckpt["initialized_from"]
    command = command or ckpt.get("command") or f"python -m training fit {cfg.name}"
    validation = load_data(cfg, run_dir).validation.numpy()  # the anomaly score's calibration images
    metrics = json.loads(eval_path.read_text())
    return write_model(cfg, model, metrics, record, command, model_dir, validation, parity_seed)


def reexport(model_dir: Path, parity_seed: int = 1234) -> dict:
    """Export a served model again from its own graphs: same weights, config, metrics and training
    record, the current manifest layout."""
    cfg, model, old = load_served_model(model_dir)
    splits = load_data(cfg)  # the model's own config says where its data is
    metrics = old["metrics"]
    if "test_bits_per_dim" not in metrics:  # what the evaluation records and this manifest lacks is measured
        x = prepare_eval_images(cfg, splits.test)
        bits = measured_bits_per_dim(cfg, model, x, metrics["test_nll"], "cpu", progress=False)
        metrics = {**metrics, "test_bits_per_dim": bits}
        log.info("%s: test bits/dim %.4f added to the metrics", model_dir.name, bits)
    return write_model(cfg, model, metrics, old["training"], old["command"], model_dir,
                       splits.validation.numpy(), parity_seed)  # fmt: skip


def write_model(
    cfg: Config,
    model: VAE,
    metrics: dict,
    record: dict,
    command: str,
    model_dir: Path,
    validation: np.ndarray,
    parity_seed: int,
) -> dict:
    """The graphs, their shared weights, the anomaly calibration (on ``validation``, never the test
    split) and the manifest, after the parity check against torch."""
    model = model.float().cpu().eval()
    model_dir.mkdir(parents=True, exist_ok=True)
    specs = graph_specs(model)
    examples, fresh = parity_inputs(model.image_size, cfg.model.latent_dim, np.random.default_rng(parity_seed))
    modules = {
        "encoder": EncoderGraph(model),
        "decoder": DecoderGraph(model),
        "reparameterize": ReparameterizeGraph(),
        "score": ScoreGraph(model),
    }
    for name, module in modules.items():
        example = tuple(torch.from_numpy(v) for v in examples[name].values())
        _export_graph(module, example, specs[name], model_dir / f"{name}.onnx", cfg.export.opset)
    share_weights(model_dir, list(modules))
    files, parity = {}, {}
    for name, module in modules.items():
        path = model_dir / f"{name}.onnx"
        checks = [_parity(module, path, examples[name]), _parity(module, path, fresh[name])]
        parity[name] = {"max_abs_error": max(c[0] for c in checks), "max_scaled_error": max(c[1] for c in checks)}
        files[name] = {"path": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size}
        log.info("exported %s (%d bytes), parity %s", path, path.stat().st_size, parity[name])
    worst = max(p["max_scaled_error"] for p in parity.values())
    if worst > cfg.export.parity_tolerance:
        raise ExportError(
            f"ONNX parity check failed: error {worst:.3e} > tolerance {cfg.export.parity_tolerance:.1e} ({parity})"
        )
    weights = model_dir / WEIGHTS_FILE
    weights_spec = {"path": WEIGHTS_FILE, "sha256": sha256_of(weights), "bytes": weights.stat().st_size}
    manifest = build_manifest(cfg, model, record, metrics, files, specs, parity, command, weights_spec)
    manifest["anomaly"] = calibrate(model_dir, validation, tuple(cfg.model.image_shape), cfg.model.latent_dim)
    text = json.dumps(manifest, indent=2) + "\n"
    (model_dir / "manifest.json").write_text(text)
    log.info("wrote %s", model_dir / "manifest.json")
    return json.loads(text)


def parity_inputs(image_size: int, z_dim: int, rng: np.random.Generator) -> tuple[dict, dict]:
    """Inputs to trace each graph with, and inputs of fresh shapes: parity on both proves the
    dynamic axes rather than assuming them."""

    def normal(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    examples = {
        "encoder": {"x": rng.random((3, image_size), dtype=np.float32)},
        "decoder": {"z": normal(4, z_dim)},
        "reparameterize": {
            "mean": normal(5, z_dim),
            "log_var": normal(5, z_dim),
            "eps": normal(MAX_K_PARITY, 5, z_dim),
        },
        "score": {"x": (rng.random((5, image_size)) < 0.5).astype(np.float32), "eps": normal(MAX_K_PARITY, 5, z_dim)},
    }
    fresh = {
        "encoder": {"x": rng.random((7, image_size), dtype=np.float32)},
        "decoder": {"z": normal(9, z_dim)},
        "reparameterize": {"mean": normal(2, z_dim), "log_var": normal(2, z_dim), "eps": normal(4, 2, z_dim)},
        "score": {"x": (rng.random((6, image_size)) < 0.3).astype(np.float32), "eps": normal(8, 6, z_dim)},
    }
    return examples, fresh


def build_manifest(
    cfg: Config,
    model: VAE,
    record: dict,
    metrics: dict,
    files: dict,
    specs: dict,
    parity: dict,
    command: str,
    weights: dict,
) -> dict:
    return {
        "manifest_version": MANIFEST_VERSION,
        "name": cfg.name,
        "version": cfg.version,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": {
            "name": cfg.data.dataset,
            "sha256": metrics.get("dataset_sha256"),
            **(
                {
                    "path": cfg.data.path,
                    "test_fraction": cfg.data.test_fraction,
                    "validation_fraction": cfg.data.validation_fraction,
                    "split_seed": cfg.data.split_seed,
                }
                if cfg.data.dataset == "images"
                else {"validation_size": cfg.data.validation_size}
            ),  # fmt: skip
        },
        "preprocessing": {
            "scale": "pixel / 255, values in [0, 1]",
            "binarization": (
                "train: dynamic Bernoulli draws; test: static, torch.rand(seed 0) < x"
                if cfg.model.likelihood == "bernoulli"
                else "none (continuous pixels)"
            ),
        },
        "image_shape": list(cfg.model.image_shape),  # (H, W, C)
        "latent_dim": cfg.model.latent_dim,
        "likelihood": cfg.model.likelihood,
        "sigma": model.sigma,
        "architecture": resolve_architecture(cfg.model),
        "config": cfg.to_dict(),
        "training": record,
        "command": command,
        "git_commit": _git_commit(),
        "metrics": metrics,
        "onnx": {"opset": cfg.export.opset, "parity": parity, "parity_tolerance": cfg.export.parity_tolerance},
        "graphs": {name: {**files[name], **specs[name]} for name in specs},
        "weights": weights,
    }
