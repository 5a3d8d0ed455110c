"""Fit and evaluate: the training loop, early stopping, checkpoints with resume, test metrics."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed, objective
from .config import Config, ConfigError
from .data import Splits, binarize_dynamic, binarize_static, load_splits
from .model import VAE

log = logging.getLogger(__name__)


def use_device(cfg: Config) -> str:
    """Apply the thread setting and check the device before any work starts."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = cfg.train.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asked for, but torch sees no CUDA device")
    return device


def make_model(cfg: Config) -> VAE:
    torch.manual_seed(cfg.train.seed)  # the same seed gives the same initial weights
    return VAE(cfg.model)


def prepare_eval_images(cfg: Config, x: torch.Tensor) -> torch.Tensor:
    """Bernoulli models are scored on statically binarized pixels; Gaussian ones on raw pixels."""
    return binarize_static(x, seed=0) if cfg.model.likelihood == "bernoulli" else x


def load_data(cfg: Config) -> Splits:
    return load_splits(cfg.data.dataset, cfg.data.data_dir, cfg.data.validation_size, cfg.data.subset)


def _beta(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """β, linearly warmed up from 0 over ``kl_warmup_epochs`` (then constant)."""
    warmup_steps = cfg.train.kl_warmup_epochs * steps_per_epoch
    return cfg.train.beta * (min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)


@torch.no_grad()
def evidence_over(model: VAE, x: torch.Tensor, samples: int, rows: int, seed: int, device: str,
                  progress: bool = False) -> dict[str, torch.Tensor]:
    """Per-image evidence terms and posterior means over a dataset, with K = ``samples`` draws of ε."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    # Preallocated: small per-step result tensors kept alive between the large temporaries
    # fragment glibc's heap (RSS grew by GBs over an IWAE run before this).
    out = {name: torch.empty(len(x)) for name in objective.Evidence._fields}
    out["mean"] = torch.empty(len(x), model.cfg.latent_dim)
    for start in tqdm(range(0, len(x), rows), desc=f"evidence K={samples}", disable=not progress, leave=False):
        batch = x[start:start + rows].to(device)  # (B, 784)
        eps = torch.randn((samples, len(batch), model.cfg.latent_dim), generator=generator).to(device)  # (K, B, Z)
        mean, log_var = model.encoder(batch)
        terms = objective.evidence(mean, log_var, eps, model.log_px_given_z(batch))
        for name, value in (*terms._asdict().items(), ("mean", mean)):
            out[name][start:start + len(batch)] = value.cpu()
    return out


def _checkpoint(model, optimizer, scheduler, generator, state: dict, cfg: Config, command: str | None) -> dict:
    return {
        "config": cfg.to_dict(),
        "command": command,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "generator": generator.get_state(),
        **state,
    }


def fit(cfg: Config, run_dir: Path, resume: bool = False, progress: bool = True, command: str | None = None) -> Path:
    """Train with early stopping on the validation ELBO; returns the best checkpoint's path.

    ``command`` (the CLI line that reproduces this run) is kept in the checkpoints for the manifest.
    """
    world = distributed.current()  # one process, or this rank of a torchrun job
    device = distributed.rank_device(use_device(cfg), world)
    run_dir.mkdir(parents=True, exist_ok=True)
    splits = load_data(cfg)
    validation = prepare_eval_images(cfg, splits.validation)
    model = make_model(cfg).to(device)
    net = distributed.wrap(model, world, device)  # DDP under torchrun: gradients averaged over ranks
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs, eta_min=cfg.train.lr_min)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    state = {"epoch": 0, "step": 0, "best_val_elbo": -math.inf, "best_epoch": -1, "stale_epochs": 0}
    last, best, metrics_path = run_dir / "last.pt", run_dir / "best.pt", run_dir / "metrics.jsonl"
    if resume and last.is_file():
        ckpt = torch.load(last, map_location=device, weights_only=False)
        if ckpt["config"] != cfg.to_dict():
            raise ConfigError(f"{last} was trained with a different config; start a new --runs-dir or drop --resume")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        state = {k: ckpt[k] for k in state}
        command = ckpt.get("command") or command
        log.info("resumed from %s at epoch %d", last, state["epoch"])
    elif metrics_path.exists() and world.is_main:
        metrics_path.unlink()  # a fresh run starts a fresh log

    n, batch_size = len(splits.train), cfg.train.batch_size
    steps_per_epoch = math.ceil(n / batch_size)
    z_dim = cfg.model.latent_dim
    max_steps = cfg.train.max_steps or math.inf
    while state["epoch"] < cfg.train.epochs and state["stale_epochs"] < cfg.train.patience and state["step"] < max_steps:
        epoch, started = state["epoch"], time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=generator)
        totals = torch.zeros(3, dtype=torch.float64)  # loss sum, ELBO sum, rows: this rank's share
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.train.epochs}", disable=not progress, leave=False)
        for i in bar:
            idx = order[i * batch_size:(i + 1) * batch_size]
            x = splits.train[idx]  # (B, 784): the global batch, drawn alike on every rank
            if cfg.model.likelihood == "bernoulli":
                x = binarize_dynamic(x, generator)
            eps = torch.randn((1, len(x), z_dim), generator=generator)  # (1, B, Z)
            part = distributed.shard(len(x), world)  # this rank's rows (all of them in one process)
            beta = _beta(cfg, state["step"], steps_per_epoch)
            terms = net(x[part].to(device), eps[:, part].to(device))
            shard_loss = objective.loss(terms, beta)  # mean over this rank's rows
            # DDP averages gradients over ranks; scaled so, the average is that of the global batch's mean.
            batch_loss = shard_loss * (len(terms.elbo) * world.size / len(x))
            optimizer.zero_grad(set_to_none=True)
            batch_loss.backward()
            optimizer.step()
            state["step"] += 1
            totals += torch.tensor([shard_loss.item() * len(terms.elbo), terms.elbo.sum().item(), len(terms.elbo)], dtype=torch.float64)
            bar.set_postfix(loss=f"{totals[0] / totals[2]:.2f}")
            if log.isEnabledFor(logging.DEBUG):
                log.debug("step %d parameters %s", state["step"], fingerprint(model))
            if state["step"] >= max_steps:
                break
        scheduler.step()
        totals = distributed.all_sum(totals)  # every rank's rows
        val = evidence_over(model, validation, samples=1, rows=1000, seed=1, device=device)
        record = {
            "epoch": epoch + 1,
            "train_loss": float(totals[0] / totals[2]),
            "train_elbo": float(totals[1] / totals[2]),
            "val_elbo": float(val["elbo"].mean()),
            "val_reconstruction": float(val["reconstruction"].mean()),
            "val_kl": float(val["kl"].mean()),
            "beta": beta,
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - started, 2),
        }
        if model.sigma is not None:
            record["sigma"] = model.sigma
        state["epoch"] = epoch + 1
        warming_up = beta < cfg.train.beta  # the true ELBO is what we select on, so warm-up epochs only count as a fallback
        if state["best_epoch"] < 0 or (not warming_up and record["val_elbo"] > state["best_val_elbo"]):
            state.update(best_val_elbo=record["val_elbo"], best_epoch=epoch + 1, stale_epochs=0)
        elif not warming_up:
            state["stale_epochs"] += 1
        if world.is_main:  # rank 0 writes checkpoints and metrics; the others hold the same weights
            ckpt = _checkpoint(model, optimizer, scheduler, generator, state, cfg, command)
            torch.save(ckpt, last)
            if state["best_epoch"] == epoch + 1:
                torch.save(ckpt, best)
            with metrics_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        log.info("epoch %d: train loss %.2f, val ELBO %.2f (best %.2f @ %d), %.1fs", epoch + 1,
                 record["train_loss"], record["val_elbo"], state["best_val_elbo"], state["best_epoch"], record["seconds"])
    if state["stale_epochs"] >= cfg.train.patience:
        log.info("early stop: no validation improvement for %d epochs", cfg.train.patience)
    return best


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: equal on two ranks only if their weights are bit-identical."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[Config, VAE, dict]:
    ckpt = torch.load(path, map_location=device, weights_only=False)
    cfg = Config.from_dict(ckpt["config"])
    model = VAE(cfg.model).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return cfg, model, ckpt


def evaluate(cfg: Config, model: VAE, splits: Splits, device: str = "cpu", progress: bool = True) -> dict:
    """Test-set metrics in nats: ELBO, its two terms, IWAE log p(x), the gap, active units."""
    x = prepare_eval_images(cfg, splits.test)
    k = cfg.eval.iwae_samples
    terms = evidence_over(model, x, samples=k, rows=max(1, cfg.eval.iwae_batch * 1000 // k), seed=cfg.train.seed + 2,
                          device=device, progress=progress)
    # Active units (Burda et al. 2016): Cov_x(E_q[z]) per latent dimension above a threshold.
    activity = terms["mean"].var(0)  # (Z,)
    metrics = {
        "test_elbo": float(terms["elbo"].mean()),
        "test_reconstruction": float(terms["reconstruction"].mean()),
        "test_kl": float(terms["kl"].mean()),
        "test_log_likelihood": float(terms["log_likelihood"].mean()),
        "test_nll": -float(terms["log_likelihood"].mean()),
        "test_gap": float((terms["log_likelihood"] - terms["elbo"]).mean()),
        "iwae_samples": k,
        "active_units": int((activity > cfg.eval.active_unit_threshold).sum()),
        "latent_dim": cfg.model.latent_dim,
        "latent_activity": [round(float(a), 5) for a in activity],
        "test_images": len(x),
    }
    if model.sigma is not None:
        metrics["sigma"] = model.sigma
    return metrics
