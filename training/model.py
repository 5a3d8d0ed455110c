"""Encoder q(z|x) and decoder p(x|z) networks. No loss here: the math is in objective.py.

Images travel flat in numpy/PIL order, (B, H·W·C) in [0, 1], so exported graphs take what the
service receives; the convolutions see them as (B, C, H, W). The architecture follows the image
shape: two stride-2 convolutions where H and W are multiples of 4 (``conv``), an MLP otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from . import objective
from .config import ModelConfig


def resolve_architecture(cfg: ModelConfig) -> str:
    """``auto`` -> conv where H and W are multiples of 4 (two halvings), else mlp."""
    if cfg.architecture != "auto":
        return cfg.architecture
    h, w, _ = cfg.image_shape
    return "conv" if h % 4 == 0 and w % 4 == 0 else "mlp"


def _mlp(widths: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ELU())
    return nn.Sequential(*layers)


class ChannelsFirst(nn.Module):
    """(B, H·W·C) in numpy order -> (B, C, H, W) for the convolutions."""

    def __init__(self, shape: tuple[int, int, int]):
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w, c = self.shape
        if c == 1:  # one channel: the orders agree, and the graph needs no transpose
            return x.reshape(-1, 1, h, w)
        return x.reshape(-1, h, w, c).permute(0, 3, 1, 2)


class ChannelsLast(nn.Module):
    """(B, C, H, W) -> (B, H·W·C) in numpy order."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            return x.flatten(1)
        return x.permute(0, 2, 3, 1).flatten(1)


class Encoder(nn.Module):
    """x (B, D) -> mean, log_var (B, Z)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        z, (h, w, c) = cfg.latent_dim, cfg.image_shape
        if resolve_architecture(cfg) == "conv":
            c1, c2 = cfg.hidden[0], cfg.hidden[-1]
            self.body = nn.Sequential(
                ChannelsFirst(cfg.image_shape),  # (B, C, H, W)
                nn.Conv2d(c, c1, 4, stride=2, padding=1),  # (B, c1, H/2, W/2)
                nn.ELU(),
                nn.Conv2d(c1, c2, 4, stride=2, padding=1),  # (B, c2, H/4, W/4)
                nn.ELU(),
                nn.Flatten(),
                nn.Linear(c2 * (h // 4) * (w // 4), cfg.dense),
                nn.ELU(),
                nn.Linear(cfg.dense, 2 * z),
            )
        else:
            self.body = _mlp([h * w * c, *cfg.hidden, 2 * z])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_var = self.body(x).chunk(2, dim=-1)  # (B, Z) each
        return mean, log_var


class Decoder(nn.Module):
    """z (N, Z) -> h (N, D): Bernoulli logits, or the pre-sigmoid Gaussian mean."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        z, (h, w, c) = cfg.latent_dim, cfg.image_shape
        if resolve_architecture(cfg) == "conv":
            c1, c2 = cfg.hidden[0], cfg.hidden[-1]
            self.body = nn.Sequential(
                nn.Linear(z, cfg.dense),
                nn.ELU(),
                nn.Linear(cfg.dense, c2 * (h // 4) * (w // 4)),
                nn.ELU(),
                nn.Unflatten(1, (c2, h // 4, w // 4)),
                nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1),  # (N, c1, H/2, W/2)
                nn.ELU(),
                nn.ConvTranspose2d(c1, c, 4, stride=2, padding=1),  # (N, C, H, W)
                ChannelsLast(),  # (N, D)
            )
        else:
            self.body = _mlp([z, *reversed(cfg.hidden), h * w * c])

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

    @property
    def image_size(self) -> int:
        return math.prod(self.cfg.image_shape)

    def log_px_given_z(self, x: torch.Tensor):
        """The closure objective.evidence wants: z (K, B, Z) -> log p(x|z) (K, B)."""

        def fn(z: torch.Tensor) -> torch.Tensor:
            k, b, d = z.shape
            h = self.decoder(z.reshape(k * b, d)).reshape(k, b, -1)  # (K, B, D)
            return objective.log_likelihood(self.cfg.likelihood, h, self.log_scale, x)

        return fn

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> objective.Evidence:
        """The training forward pass is the evidence (so DistributedDataParallel can wrap it)."""
        return self.evidence(x, eps)

    def evidence(self, x: torch.Tensor, eps: torch.Tensor) -> objective.Evidence:
        """x (B, D), eps (K, B, Z) -> per-input ELBO terms and IWAE estimate."""
        mean, log_var = self.encoder(x)
        return objective.evidence(mean, log_var, eps, self.log_px_given_z(x))

    def mean_image(self, z: torch.Tensor) -> torch.Tensor:
        """E[x|z], (N, D) in [0, 1]."""
        return objective.decoder_mean(self.decoder(z))

    @property
    def sigma(self) -> float | None:
        return None if self.log_scale is None else float(self.log_scale.detach().exp())
