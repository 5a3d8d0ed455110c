"""Export a trained VAE as three ONNX graphs, check them against torch, write the manifest.

- ``encoder.onnx``: x (B, 784) -> mean, log_var (B, Z)
- ``decoder.onnx``: z (B, Z) -> image (B, 784) = E[x|z], plus the likelihood's parameters
- ``score.onnx``:   x (B, 784), eps (K, B, Z) -> elbo, reconstruction, kl, log_likelihood (B,)
- ``reparameterize.onnx``: mean, log_var (B, Z), eps (K, B, Z) -> z (K, B, Z), no weights
- ``weights.bin``: the graphs' weights as ONNX external data, each tensor stored once

The score graph is traced from ``objective.evidence``: the service runs the math, never re-types it.
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
from .config import Config
from .model import IMAGE_SIZE, VAE
from .train import load_checkpoint

log = logging.getLogger(__name__)

MANIFEST_VERSION = 1


class ExportError(RuntimeError):
    """The exported graphs disagree with torch beyond the tolerance."""
MAX_K_PARITY = 3


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

    def forward(self, z):  # (B, Z) -> image (B, 784), then logits (B, 784) or log_scale (B, 784)
        h = self.model.decoder(z)
        image = objective.decoder_mean(h)
        if self.model.cfg.likelihood == "bernoulli":
            return image, h
        return image, self.model.log_scale.expand_as(h)


class ScoreGraph(nn.Module):
    def __init__(self, model: VAE):
        super().__init__()
        self.model = model

    def forward(self, x, eps):  # (B, 784), (K, B, Z) -> 4 × (B,)
        return tuple(self.model.evidence(x, eps))


class ReparameterizeGraph(nn.Module):
    """No weights: z = μ + σ ⊙ ε from objective.py, so the service samples q(z|x) without re-typing it."""

    def forward(self, mean, log_var, eps):  # (B, Z), (B, Z), (K, B, Z) -> (K, B, Z)
        return objective.reparameterize(mean, log_var, eps)


def graph_specs(model: VAE) -> dict[str, dict]:
    """Names, shapes (−1: a dynamic axis) and batch axes of each graph's inputs and outputs."""
    z = model.cfg.latent_dim
    second = "logits" if model.cfg.likelihood == "bernoulli" else "log_scale"
    specs = {
        "encoder": {
            "inputs": {"x": [-1, IMAGE_SIZE]},
            "outputs": {"mean": [-1, z], "log_var": [-1, z]},
            "batch_axes": {"x": 0},
        },
        "decoder": {
            "inputs": {"z": [-1, z]},
            "outputs": {"image": [-1, IMAGE_SIZE], second: [-1, IMAGE_SIZE]},
            "batch_axes": {"z": 0},
        },
        "reparameterize": {
            "inputs": {"mean": [-1, z], "log_var": [-1, z], "eps": [-1, -1, z]},
            "outputs": {"z": [-1, -1, z]},
            "batch_axes": {"mean": 0, "log_var": 0, "eps": 1, "z": 1},
        },
        "score": {
            "inputs": {"x": [-1, IMAGE_SIZE], "eps": [-1, -1, z]},
            "outputs": {name: [-1] for name in objective.Evidence._fields},
            "batch_axes": {"x": 0, "eps": 1},
        },
    }
    for spec in specs.values():  # every tensor's batch axis, listed: the service splits batches by it
        spec["batch_axes"] = {name: spec["batch_axes"].get(name, 0) for name in (*spec["inputs"], *spec["outputs"])}
    return specs


def _export_graph(module: nn.Module, example: tuple, spec: dict, path: Path, opset: int) -> None:
    dynamic_axes = {name: {i: f"{name}_dim{i}" for i, d in enumerate(shape) if d == -1}
                    for name, shape in {**spec["inputs"], **spec["outputs"]}.items()}
    for name, axis in spec["batch_axes"].items():
        dynamic_axes[name][axis] = "batch"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, example, str(path), input_names=list(spec["inputs"]), output_names=list(spec["outputs"]),
            dynamic_axes=dynamic_axes, opset_version=opset, dynamo=False,
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

    Scores are sums over 784 pixels of values in the hundreds of nats, where float32 rounding
    alone is ~1e-4 absolute; the relative form is what the tolerance bounds.
    """
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, inputs)
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in inputs.values()))
    want = want if isinstance(want, tuple) else (want,)
    want = [w.detach().numpy() for w in want]
    errors = [(np.abs(g - w), 1.0 + np.abs(w)) for g, w in zip(got, want)]
    return max(float(e.max()) for e, _ in errors), max(float((e / s).max()) for e, s in errors)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=10).stdout
        return out.stdout.strip() + ("-dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def export_model(run_dir: Path, model_dir: Path, command: str | None = None, parity_seed: int = 1234) -> dict:
    """Write the graphs and manifest.json into ``model_dir``; raise if parity is out of tolerance."""
    best, eval_path = run_dir / "best.pt", run_dir / "eval.json"
    if not best.is_file():
        raise FileNotFoundError(f"{best} not found: train first")
    if not eval_path.is_file():
        raise FileNotFoundError(f"{eval_path} not found: run `evaluate` before `export`")
    cfg, model, ckpt = load_checkpoint(best)
    model = model.float().cpu().eval()
    metrics = json.loads(eval_path.read_text())
    model_dir.mkdir(parents=True, exist_ok=True)
    specs = graph_specs(model)
    z_dim = cfg.model.latent_dim
    rng = np.random.default_rng(parity_seed)
    x = (rng.random((5, IMAGE_SIZE)) < 0.5).astype(np.float32)
    examples = {
        "encoder": (EncoderGraph(model), {"x": rng.random((3, IMAGE_SIZE), dtype=np.float32)}),
        "decoder": (DecoderGraph(model), {"z": rng.standard_normal((4, z_dim), dtype=np.float32)}),
        "reparameterize": (ReparameterizeGraph(), {"mean": rng.standard_normal((5, z_dim), dtype=np.float32),
                                                   "log_var": rng.standard_normal((5, z_dim), dtype=np.float32),
                                                   "eps": rng.standard_normal((MAX_K_PARITY, 5, z_dim), dtype=np.float32)}),
        "score": (ScoreGraph(model), {"x": x, "eps": rng.standard_normal((MAX_K_PARITY, 5, z_dim), dtype=np.float32)}),
    }
    # Parity is checked on fresh shapes too, so the dynamic axes are proven, not assumed.
    fresh = {
        "encoder": {"x": rng.random((7, IMAGE_SIZE), dtype=np.float32)},
        "decoder": {"z": rng.standard_normal((9, z_dim), dtype=np.float32)},
        "reparameterize": {"mean": rng.standard_normal((2, z_dim), dtype=np.float32),
                           "log_var": rng.standard_normal((2, z_dim), dtype=np.float32),
                           "eps": rng.standard_normal((4, 2, z_dim), dtype=np.float32)},
        "score": {"x": (rng.random((6, IMAGE_SIZE)) < 0.3).astype(np.float32),
                  "eps": rng.standard_normal((8, 6, z_dim), dtype=np.float32)},
    }
    for name, (module, example) in examples.items():
        _export_graph(module, tuple(torch.from_numpy(v) for v in example.values()), specs[name],
                      model_dir / f"{name}.onnx", cfg.export.opset)
    share_weights(model_dir, list(examples))
    files, parity = {}, {}
    for name, (module, example) in examples.items():
        path = model_dir / f"{name}.onnx"
        checks = [_parity(module, path, example), _parity(module, path, fresh[name])]
        parity[name] = {"max_abs_error": max(c[0] for c in checks), "max_scaled_error": max(c[1] for c in checks)}
        files[name] = {"path": path.name, "sha256": sha256_of(path), "bytes": path.stat().st_size}
        log.info("exported %s (%d bytes), parity %s", path, path.stat().st_size, parity[name])
    worst = max(p["max_scaled_error"] for p in parity.values())
    if worst > cfg.export.parity_tolerance:
        raise ExportError(f"ONNX parity check failed: error {worst:.3e} > tolerance {cfg.export.parity_tolerance:.1e} ({parity})")
    weights = model_dir / WEIGHTS_FILE
    weights_spec = {"path": WEIGHTS_FILE, "sha256": sha256_of(weights), "bytes": weights.stat().st_size}
    text = json.dumps(build_manifest(cfg, model, ckpt, metrics, files, specs, parity, command, weights_spec), indent=2) + "\n"
    (model_dir / "manifest.json").write_text(text)
    log.info("wrote %s", model_dir / "manifest.json")
    return json.loads(text)


def build_manifest(cfg: Config, model: VAE, ckpt: dict, metrics: dict, files: dict, specs: dict, parity: dict,
                   command: str | None, weights: dict) -> dict:
    return {
        "manifest_version": MANIFEST_VERSION,
        "name": cfg.name,
        "version": cfg.version,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "dataset": {"name": cfg.data.dataset, "sha256": metrics.get("dataset_sha256"),
                    "validation_size": cfg.data.validation_size},
        "preprocessing": {
            "scale": "pixel / 255, values in [0, 1]",
            "binarization": ("train: dynamic Bernoulli draws; test: static, torch.rand(seed 0) < x"
                             if cfg.model.likelihood == "bernoulli" else "none (continuous pixels)"),
        },
        "input_shape": [28, 28],
        "latent_dim": cfg.model.latent_dim,
        "likelihood": cfg.model.likelihood,
        "sigma": model.sigma,
        "architecture": cfg.model.architecture,
        "config": cfg.to_dict(),
        "training": {"best_epoch": ckpt.get("best_epoch"), "epochs_run": ckpt.get("epoch"),
                     "best_val_elbo": ckpt.get("best_val_elbo")},
        "command": command or ckpt.get("command") or f"python -m training fit {cfg.name}",
        "git_commit": _git_commit(),
        "metrics": metrics,
        "onnx": {"opset": cfg.export.opset, "parity": parity,
                 "parity_tolerance": cfg.export.parity_tolerance},
        "graphs": {name: {**files[name], **specs[name]} for name in specs},
        "weights": weights,
    }
