"""Calibrated out-of-distribution scores: the density of the model's own statistics (DoSE).

Raw log-likelihood fails at flagging inputs unlike the training data: a model of Fashion-MNIST
gives handwritten digits a higher likelihood than its own test set (Nalisnick et al. 2019). What
separates them is how *typical* an input's statistics are, not how large its likelihood is
(Morningstar et al. 2021, "Density of States Estimation"). Per input we take five statistics:

- ``log_likelihood``, ``kl`` and ``gap`` from the score graph (the IWAE estimate, the KL of
  q(z|x) to the prior, and their gap to the ELBO);
- ``complexity``: the input's negative log-likelihood in bits minus its PNG-compressed length in
  bits (Serrà et al. 2020), which discounts inputs that are merely simple;
- ``latent_distance``: the Mahalanobis distance of the posterior mean μ(x) from the calibration
  set's posterior means.

Export fits a Gaussian kernel density per statistic on half of the validation split and records
the score's quantiles on the other half (never the test split). The score is −Σ log density:
higher is more anomalous; its percentile is the share of calibration images that scored lower.
This module is the one copy of that arithmetic: the exporter fits with it, the service applies it.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

STATISTICS = ("log_likelihood", "kl", "gap", "complexity", "latent_distance")
QUANTILES = 1001  # the score at percentiles 0, 0.1, ..., 100 of the calibration set
KDE_POINTS = 500  # calibration values kept per statistic
TINY = 1e-300  # a density floor: far from every calibration value the log density is finite


def png_bits(images: np.ndarray) -> np.ndarray:
    """(B, H, W) or (B, H, W, 3) in [0, 1] -> (B,) PNG-compressed length of each 8-bit image, in bits."""
    pixels = np.clip(np.rint(images * 255), 0, 255).astype(np.uint8)
    out = np.empty(len(pixels))
    for i, image in enumerate(pixels):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG", optimize=True)
        out[i] = 8 * len(buffer.getvalue())
    return out


def input_statistics(scores: dict[str, np.ndarray], images: np.ndarray) -> dict[str, np.ndarray]:
    """The statistics that need no calibration. ``scores``: the score graph's outputs, each (B,);
    ``images``: the inputs as (B, H, W[, C]) in [0, 1]."""
    return {
        "log_likelihood": scores["log_likelihood"].astype(np.float64),
        "kl": scores["kl"].astype(np.float64),
        "gap": scores["gap"].astype(np.float64),
        "complexity": -scores["log_likelihood"] / math.log(2) - png_bits(images),
    }


def latent_distance(mean: np.ndarray, latent: dict) -> np.ndarray:
    """Mahalanobis distance of μ(x) (B, Z) from the calibration's posterior means: (B,)."""
    d = mean - np.asarray(latent["center"])  # (B, Z)
    return np.sqrt(np.maximum(np.einsum("bi,ij,bj->b", d, np.asarray(latent["precision"]), d), 0.0))


def statistics(scores: dict[str, np.ndarray], mean: np.ndarray, images: np.ndarray, latent: dict) -> dict:
    """All five statistics per input, each (B,)."""
    return {**input_statistics(scores, images), "latent_distance": latent_distance(mean, latent)}


def kde_log_density(points: np.ndarray, bandwidth: float, x: np.ndarray) -> np.ndarray:
    """log of a Gaussian kernel density over ``points`` at each x: (N,), (B,) -> (B,)."""
    z = (x[:, None] - points[None, :]) / bandwidth  # (B, N)
    density = np.exp(-0.5 * z * z).mean(1) / (bandwidth * math.sqrt(2 * math.pi))
    return np.log(density + TINY)


def score(stats: dict[str, np.ndarray], calibration: dict) -> np.ndarray:
    """−Σ log density of each statistic under the calibration's: (B,), higher is more anomalous."""
    total = np.zeros(len(stats[STATISTICS[0]]))
    for name in STATISTICS:
        kde = calibration["kde"][name]
        total -= kde_log_density(np.asarray(kde["points"]), kde["bandwidth"], stats[name])
    return total


def percentile(scores: np.ndarray, quantiles: list[float]) -> np.ndarray:
    """The share of calibration images that scored lower, 0–100, by the recorded quantiles."""
    return np.interp(scores, np.asarray(quantiles), np.linspace(0, 100, len(quantiles)))


def fit(stats: dict[str, np.ndarray], means: np.ndarray, held_out: dict[str, np.ndarray], held_out_means: np.ndarray,
        rng: np.random.Generator) -> dict:  # fmt: skip
    """The calibration from two disjoint halves of the validation split: the statistics' densities
    and the latent center from one, the score's quantiles from the other. ``stats`` and
    ``held_out`` are ``input_statistics``; the latent distance is added here, once the center is known."""
    center = means.mean(0)
    covariance = np.cov((means - center).T).reshape(means.shape[1], means.shape[1])
    precision = np.linalg.pinv(covariance + 1e-6 * np.eye(len(center)))
    latent = {"center": center.tolist(), "precision": precision.tolist()}
    stats = {**stats, "latent_distance": latent_distance(means, latent)}
    held_out = {**held_out, "latent_distance": latent_distance(held_out_means, latent)}
    kde = {}
    for name in STATISTICS:
        values = stats[name]
        points = rng.choice(values, size=min(KDE_POINTS, len(values)), replace=False)
        bandwidth = 1.06 * float(values.std()) * len(values) ** -0.2 or 1.0  # Silverman's rule
        kde[name] = {"points": [round(float(p), 6) for p in np.sort(points)], "bandwidth": bandwidth}
    calibration = {"kde": kde, "latent": latent}
    held_out_scores = score(held_out, calibration)
    calibration["quantiles"] = np.percentile(held_out_scores, np.linspace(0, 100, QUANTILES)).tolist()
    return calibration


@dataclass(frozen=True)
class Verdict:
    score: np.ndarray
    percentile: np.ndarray
    outlier: np.ndarray


def judge(stats: dict[str, np.ndarray], calibration: dict, threshold: float) -> Verdict:
    s = score(stats, calibration)
    p = percentile(s, calibration["quantiles"])
    return Verdict(s, p, p >= threshold)
