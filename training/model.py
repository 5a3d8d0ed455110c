"""Encoder q(z|x) and decoder p(x|z) networks. No loss here: the math is in objective.py.

Images travel flat, (B, 784) in [0, 1], so exported graphs take what the service receives.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import objective
from .config import ModelConfig

IMAGE_SHAPE = (1, 28, 28)
IMAGE_SIZE = math.prod(IMAGE_SHAPE)  # 784


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class Encoder(nn.Module):
    """x (B, 784) -> mean, log_var (B, Z)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        z = cfg.latent_dim
        if cfg.architecture == "conv":
            c1, c2 = cfg.hidden[0], cfg.hidden[-1]
            self.body = nn.Sequential(
                nn.Unflatten(1, IMAGE_SHAPE),  # (B, 1, 28, 28)
                nn.Conv2d(1, c1, 4, stride=2, padding=1),
                nn.ELU(),  # (B, c1, 14, 14)
                nn.Conv2d(c1, c2, 4, stride=2, padding=1),
                nn.ELU(),  # (B, c2, 7, 7)
                nn.Flatten(),
                nn.Linear(c2 * 49, cfg.dense),
                nn.ELU(),
                nn.Linear(cfg.dense, 2 * z),
            )
        else:
            self.body = _mlp([IMAGE_SIZE, *cfg.hidden, 2 * z])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.body(x).chunk(2, dim=-1)  # (B, Z) each
        return mean, log_var


class Decoder(nn.Module):
    """z (N, Z) -> h (N, 784): Bernoulli logits, or the pre-sigmoid Gaussian mean."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        z = cfg.latent_dim
        if cfg.architecture == "conv":
            c1, c2 = cfg.hidden[0], cfg.hidden[-1]
            self.body = nn.Sequential(
                nn.Linear(z, cfg.dense),
                nn.ELU(),
                nn.Linear(cfg.dense, c2 * 49),
                nn.ELU(),
                nn.Unflatten(1, (c2, 7, 7)),
                nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),
                nn.ELU(),  # (N, c1, 14, 14)
                nn.ConvTranspose2d(c1, 1, 4, stride=2, padding=1),  # (N, 1, 28, 28)
                nn.Flatten(),
            )
        else:
            self.body = _mlp([z, *reversed(cfg.hidden), IMAGE_SIZE])

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.body(z)


class VAE(nn.Module):
    """Encoder + decoder + the likelihood's σ (Gaussian only, fixed or learned)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.decoder = Decoder(cfg)
        if cfg.likelihood == "gaussian":
            init = math.log(cfg.sigma) if cfg.sigma else math.log(0.1)
            self.log_scale = nn.Parameter(torch.tensor(init), requires_grad=cfg.sigma is None)
        else:
            self.register_parameter("log_scale", None)

    def log_px_given_z(self, x: torch.Tensor):
        """The closure objective.evidence wants: z (K, B, Z) -> log p(x|z) (K, B)."""

        def fn(z: torch.Tensor) -> torch.Tensor:
            k, b, d = z.shape
            h = self.decoder(z.reshape(k * b, d)).reshape(k, b, -1)  # (K, B, 784)
            return objective.log_likelihood(self.cfg.likelihood, h, self.log_scale, x)

        return fn

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> objective.Evidence:
        """The training forward pass is the evidence (so DistributedDataParallel can wrap it)."""
        return self.evidence(x, eps)

    def evidence(self, x: torch.Tensor, eps: torch.Tensor) -> objective.Evidence:
        """x (B, 784), eps (K, B, Z) -> per-input ELBO terms and IWAE estimate."""
        mean, log_var = self.encoder(x)
        return objective.evidence(mean, log_var, eps, self.log_px_given_z(x))

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z], (N, 784) in [0, 1]."""
        return objective.decoder_mean(self.decoder(z))

    @property
    def sigma(self) -> float | None:
        return None if self.log_scale is None else float(self.log_scale.detach().exp())
