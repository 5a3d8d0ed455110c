"""``python -m benchmarks.onnx_iwae models/<name>``: a Bernoulli model's test log p(x), measured
again from its exported graphs alone, as a check on the number its manifest reports.

Only ``encoder.onnx`` and ``decoder.onnx`` run; the estimator is written here in numpy from the
definitions, not taken from ``training/objective.py`` or ``score.onnx``:
log p(x) ≈ log (1/K) Σ_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x) = N(μ, diag σ²), p(z) = N(0, I),
p(x|z) = Π_d Bern(x_d; sigmoid(logit_d)). The test images are binarized as the evaluation protocol
says (``torch.rand`` with seed 0 < x, all 10,000); ε comes from numpy's own generator.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import numpy as np

from .live import ROOT

log = logging.getLogger("benchmarks.onnx_iwae")


def log_normal(z: np.ndarray, mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """log N(z; μ, diag σ²) summed over the last axis, in float64."""
    return -0.5 * (math.log(2 * math.pi) + log_var + (z - mean) ** 2 / np.exp(log_var)).sum(-1)


def log_bernoulli(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Σ_d log Bern(x_d; sigmoid(l_d)) = Σ_d x_d·l_d − log(1 + e^{l_d}), in float64."""
    return (x * logits - np.logaddexp(0.0, logits)).sum(-1)


def log_likelihoods(model_dir: Path, x: np.ndarray, samples: int, rows: int, seed: int) -> np.ndarray:
    """Per-image IWAE estimates of log p(x), (N,), with ``samples`` draws each."""
    import onnxruntime as ort

    def session(name):
        return ort.InferenceSession(str(model_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])

    encoder, decoder = session("encoder"), session("decoder")
    rng, out = np.random.default_rng(seed), np.empty(len(x))
    for start in range(0, len(x), rows):
        batch = x[start : start + rows]  # (B, D)
        mean, log_var = (a.astype(np.float64) for a in encoder.run(["mean", "log_var"], {"x": batch}))  # (B, Z)
        eps = rng.standard_normal((samples, *mean.shape))  # (K, B, Z)
        z = mean + np.exp(0.5 * log_var) * eps  # (K, B, Z)
        (logits,) = decoder.run(["logits"], {"z": z.reshape(-1, z.shape[-1]).astype(np.float32)})  # (K·B, D)
        log_px_z = log_bernoulli(batch.astype(np.float64), logits.astype(np.float64).reshape(samples, len(batch), -1))
        log_w = log_px_z + log_normal(z, 0.0, np.zeros_like(z)) - log_normal(z, mean, log_var)  # (K, B)
        top = log_w.max(0)
        out[start : start + len(batch)] = top + np.log(np.exp(log_w - top).mean(0))
    return out


def test_images(model_dir: Path) -> np.ndarray:
    """The protocol's test set for the model, as the evaluation prepares it: all of the split its
    config names, statically binarized (seed 0)."""
    from training import train
    from training.config import Config

    cfg = Config.from_dict(json.loads((model_dir / "manifest.json").read_text())["config"])
    return train.prepare_eval_images(cfg, train.load_data(cfg).test).numpy()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.onnx_iwae", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", type=Path)
    parser.add_argument("--samples", type=int, default=1000, help="K, the draws per image")
    parser.add_argument("--rows", type=int, default=20, help="images per step (K × this rows through the decoder)")
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = json.loads((args.model_dir / "manifest.json").read_text())
    if manifest["likelihood"] != "bernoulli" or manifest["dataset"]["name"] != "fashion-mnist":
        parser.exit(2, f"{parser.prog}: error: {args.model_dir} is not a Bernoulli Fashion-MNIST model\n")
    started = time.perf_counter()
    values = log_likelihoods(args.model_dir, test_images(args.model_dir), args.samples, args.rows, args.seed)
    result = {
        "model": manifest["name"],
        "weights_sha256": manifest["weights"]["sha256"],
        "samples": args.samples,
        "images": len(values),
        "test_nll": -float(values.mean()),
        "standard_error": float(values.std(ddof=1) / math.sqrt(len(values))),
        "manifest_test_nll": manifest["metrics"]["test_nll"],
        "seconds": round(time.perf_counter() - started, 1),
    }
    path = ROOT / "benchmarks" / "results" / f"onnx-iwae-{manifest['name']}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    log.info("%s: test NLL %.3f ± %.3f nats (K = %d, ONNX graphs); the manifest says %.3f; wrote %s",
             result["model"], result["test_nll"], result["standard_error"], args.samples,
             result["manifest_test_nll"], path)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
