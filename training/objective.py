"""The VAE's math, written once: training, evaluation and the exported ONNX graphs all call it.

Model: p(x, z) = p(x|z) p(z) with prior p(z) = N(0, I) and encoder q(z|x) = N(μ, diag σ²).
All log-densities are in nats with their constants kept, so numbers compare across models.

References: Kingma & Welling 2014 (ELBO, reparameterization, closed-form KL, Appendix B);
Burda, Grosse & Salakhutdinov 2016 (the importance-weighted bound L_K).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

LOG_2PI = math.log(2.0 * math.pi)
# Each likelihood's parameter beside the mean image: the decoder graph's second output.
PARAMETER = {"bernoulli": "logits", "gaussian": "log_scale"}
LIKELIHOODS = tuple(PARAMETER)


def reparameterize(mean: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = μ + σ ⊙ ε. mean, log_var: (B, Z); eps: (..., B, Z) -> z: (..., B, Z).

    ε is an argument, not drawn here, so every graph and test is deterministic given ε.
    """
    return mean + torch.exp(0.5 * log_var) * eps


def kl_to_standard_normal(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """Closed-form KL(N(μ, diag σ²) ‖ N(0, I)) = ½ Σ (σ² + μ² − 1 − log σ²). (B, Z) -> (B,)."""
    return 0.5 * (torch.exp(log_var) + mean.square() - 1.0 - log_var).sum(-1)


def log_normal_diag(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; μ, diag σ²), summed over the last axis. (..., Z) -> (...)."""
    return -0.5 * (LOG_2PI + log_var + (z - mean).square() * torch.exp(-log_var)).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I), summed over the last axis. (..., Z) -> (...)."""
    return -0.5 * (LOG_2PI + z.square()).sum(-1)


def softplus(x: torch.Tensor) -> torch.Tensor:
    """log(1 + eˣ), stable for large |x| (written out so ONNX and torch agree to the last bits)."""
    return torch.clamp(x, min=0.0) + torch.log1p(torch.exp(-x.abs()))


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log Bern(x; sigmoid(l)) = Σ x·l − softplus(l), the with-logits form. (..., D) -> (...)."""
    return (x * logits - softplus(logits)).sum(-1)


def gaussian_log_likelihood(mean: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log N(x; mean, σ² I) with log σ = log_scale (broadcast). (..., D) -> (...)."""
    return -0.5 * (LOG_2PI + 2.0 * log_scale + ((x - mean) * torch.exp(-log_scale)).square()).sum(-1)


def decoder_mean(h: torch.Tensor) -> torch.Tensor:
    """E[x|z] from the decoder's raw output h: sigmoid for both likelihoods.

    (Bernoulli: h are logits; Gaussian: the mean lies in [0, 1].)"""
    return torch.sigmoid(h)


def decoder_outputs(
    likelihood: str, h: torch.Tensor, log_scale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E[x|z], the likelihood's parameter named ``PARAMETER[likelihood]``), each (N, D), from the
    decoder output h: Bernoulli logits h, or the Gaussian's log σ broadcast to every pixel."""
    if likelihood == "bernoulli":
        return decoder_mean(h), h
    if likelihood == "gaussian":
        return decoder_mean(h), log_scale.expand_as(h)
    raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")


def log_likelihood(likelihood: str, h: torch.Tensor, log_scale: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """log p(x|z) for the decoder output h: Bernoulli logits, or Gaussian with mean sigmoid(h)."""
    mean, parameter = decoder_outputs(likelihood, h, log_scale)
    if likelihood == "bernoulli":
        return bernoulli_log_likelihood(parameter, x)
    return gaussian_log_likelihood(mean, parameter, x)


class Evidence(NamedTuple):
    """Per-input terms in nats, each (B,)."""

    elbo: torch.Tensor  # reconstruction − kl
    reconstruction: torch.Tensor  # E_q[log p(x|z)], averaged over the K samples
    kl: torch.Tensor  # KL(q(z|x) ‖ p(z)), closed form
    log_likelihood: torch.Tensor  # IWAE estimate of log p(x) with K samples (== elbo when K = 1)
    gap: torch.Tensor  # log_likelihood − elbo ≥ 0: estimates KL(q(z|x) ‖ p(z|x))


def log_weights(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor, log_px_z: torch.Tensor) -> torch.Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) − log q(z_k|x). z: (K, B, Z), log_px_z: (K, B) -> (K, B)."""
    return log_px_z + log_standard_normal(z) - log_normal_diag(z, mean, log_var)


def evidence(mean: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor, log_px_given_z) -> Evidence:
    """ELBO terms and the IWAE estimate of log p(x) from one draw of ε.

    mean, log_var: (B, Z); eps: (K, B, Z); ``log_px_given_z(z)`` maps (K, B, Z) -> (K, B).

    IWAE: L_K = E[log (1/K) Σ_k w_k], computed with logsumexp.
    We report it as  elbo + gap  with  gap = logsumexp_k(log w_k − mean_j log w_j) − log K,
    which is the plain estimator plus a zero-mean control variate (the closed-form KL in place
    of its Monte-Carlo estimate). It has the same expectation L_K, converges to log p(x) as K
    grows, equals the ELBO exactly when K = 1, and its gap is never negative (Jensen).
    """
    z = reparameterize(mean, log_var, eps)  # (K, B, Z)
    log_px_z = log_px_given_z(z)  # (K, B)
    kl = kl_to_standard_normal(mean, log_var)  # (B,)
    reconstruction = log_px_z.mean(0)  # (B,)
    elbo = reconstruction - kl
    log_w = log_weights(z, mean, log_var, log_px_z)  # (K, B)
    centred = log_w - log_w.mean(0, keepdim=True)  # (K, B)
    gap = torch.logsumexp(centred, 0) - _log_count(centred)  # (B,) >= 0
    return Evidence(elbo=elbo, reconstruction=reconstruction, kl=kl, log_likelihood=elbo + gap, gap=gap)


def _log_count(t: torch.Tensor) -> torch.Tensor:
    """log K for t of shape (K, B), taken from the tensor so exported graphs keep K dynamic."""
    return torch.log(torch.ones_like(t).sum(0))


def plain_iwae(mean, log_var, eps, log_px_given_z) -> torch.Tensor:
    """The textbook estimator log (1/K) Σ_k w_k, (B,). Kept for checking ``evidence`` against."""
    z = reparameterize(mean, log_var, eps)
    log_w = log_weights(z, mean, log_var, log_px_given_z(z))  # (K, B)
    return torch.logsumexp(log_w, 0) - _log_count(log_w)


def loss(terms: Evidence, beta: float = 1.0, importance_weighted: bool = False) -> torch.Tensor:
    """The training loss, averaged over the batch: a scalar.

    −ELBO with the KL weighed by β (β = 1: the true ELBO; the reconstruction averaged over the K
    draws). With ``importance_weighted`` and β = 1: −L_K, the importance-weighted bound (Burda et
    al. 2016), tighter than the ELBO for K > 1; ``evidence``'s estimate of it carries a zero-mean
    control variate, so its gradient is an unbiased gradient of L_K. During a KL warm-up (β < 1)
    it is the β-ELBO either way.
    """
    if importance_weighted and beta >= 1.0:
        return -terms.log_likelihood.mean()
    return (-terms.reconstruction + beta * terms.kl).mean()
