"""Calibrate the anomaly score on the validation split (never the test split), through the exported
graphs: exactly what the service will compute for a request with the same K and seed.

The arithmetic is ``service/anomaly.py``'s (one copy); this runs the graphs over the images,
splits them in two halves (one to fit the statistics' densities, one for the score's quantiles)
and returns what the manifest records under ``anomaly``.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service import anomaly

log = logging.getLogger(__name__)

SAMPLES = 100  # K: the IWAE samples of /anomaly's default
SEED = 0
MAX_IMAGES = 5000
ROWS = 50  # images per graph run


def graph_outputs(model_dir: Path, x: np.ndarray, latent_dim: int, rng: np.random.Generator) -> tuple[dict, np.ndarray]:
    """The score graph's outputs (each (N,)) and the posterior means μ(x) (N, Z) for images x (N, D)."""
    sessions = {g: ort.InferenceSession(str(model_dir / f"{g}.onnx"), providers=["CPUExecutionProvider"])
                for g in ("encoder", "score")}  # fmt: skip
    names = [o.name for o in sessions["score"].get_outputs()]
    scores, means = {n: [] for n in names}, []
    for start in range(0, len(x), ROWS):
        batch = x[start : start + ROWS]
        means.append(sessions["encoder"].run(["mean"], {"x": batch})[0])
        eps = rng.standard_normal((SAMPLES, len(batch), latent_dim), dtype=np.float32)  # (K, B, Z)
        for name, value in zip(names, sessions["score"].run(names, {"x": batch, "eps": eps})):
            scores[name].append(value)
    return {n: np.concatenate(v) for n, v in scores.items()}, np.concatenate(means)


MIN_IMAGES = 20  # below this the percentiles would rest on a handful of images


def calibrate(
    model_dir: Path, validation: np.ndarray, image_shape: tuple[int, int, int], latent_dim: int
) -> dict | None:
    """The ``anomaly`` section of the manifest, from validation images (N, H·W·C) in [0, 1]; None
    (with a warning: /anomaly then answers 409) when there are too few to calibrate on."""
    if len(validation) < MIN_IMAGES:
        log.warning("%d validation images: too few to calibrate the anomaly score (at least %d); the model is "
                    "exported without it (raise data.validation_fraction)", len(validation), MIN_IMAGES)  # fmt: skip
        return None
    rng = np.random.default_rng(SEED)
    x = validation[rng.permutation(len(validation))[:MAX_IMAGES]].astype(np.float32)
    h, w, c = image_shape
    images = x.reshape(-1, h, w) if c == 1 else x.reshape(-1, h, w, c)
    scores, means = graph_outputs(model_dir, x, latent_dim, rng)
    half = len(x) // 2
    fit_part, quantile_part = slice(0, half), slice(half, None)

    def stats(part):
        return anomaly.input_statistics({k: v[part] for k, v in scores.items()}, images[part])

    fitted = anomaly.fit(stats(fit_part), means[fit_part], stats(quantile_part), means[quantile_part], rng)
    log.info("anomaly score calibrated on %d validation images (K=%d)", len(x), SAMPLES)
    return {
        "method": "DoSE: the density of the model's own statistics (Morningstar et al. 2021)",
        "statistics": list(anomaly.STATISTICS),
        "samples": SAMPLES,
        "seed": SEED,
        "fitted_on": {"split": "validation", "images": len(x), "densities": half, "quantiles": len(x) - half},
        **fitted,
    }
