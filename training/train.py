"""Fit and evaluate: the training loop, early stopping, checkpoints with resume, test metrics."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
from tqdm import tqdm

from . import distributed, objective
from .config import Config, ConfigError
from .data import Splits, binarize_dynamic, binarize_static, load_splits
from .model import VAE
from .served import load_served_model

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


def load_data(cfg: Config, run_dir: Path | None = None, progress: bool = False) -> Splits:
    """The config's splits; your own images are decoded once into a cache beside the run."""
    return load_splits(cfg.data, None if run_dir is None else run_dir / "decoded", progress)


def fitted_to(cfg: Config, splits: Splits) -> Config:
    """The config with the data's image shape, so the model (and every artifact) carries it."""
    if tuple(cfg.model.image_shape) == splits.image_shape:
        return cfg
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, image_shape=splits.image_shape))


def bits_per_dim(nll_nats: float, image_size: int, likelihood: str) -> float:
    """Bits per dimension as the literature reports them: for binarized data (Bernoulli) the NLL
    over D pixels in bits; for 8-bit data (Gaussian, scored on uniformly dequantized pixels
    (x·255 + u)/256) the density moved to the 0–256 scale, + D·log 256 nats, first."""
    scale = 0.0 if likelihood == "bernoulli" else image_size * math.log(256)
    return (nll_nats + scale) / (image_size * math.log(2))


def _beta(cfg: Config, step: int, steps_per_epoch: int) -> float:
    """β, linearly warmed up from 0 over ``kl_warmup_epochs`` (then constant)."""
    warmup_steps = cfg.train.kl_warmup_epochs * steps_per_epoch
    return cfg.train.beta * (min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0)


@torch.no_grad()
def evidence_over(
    model: VAE, x: torch.Tensor, samples: int, rows: int, seed: int, device: str, progress: bool = False
) -> dict[str, torch.Tensor]:
    """Per-image evidence terms and posterior means over a dataset, with K = ``samples`` draws of ε."""
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    # Preallocated: small per-step result tensors kept alive between the large temporaries
    # fragment glibc's heap (RSS grows by GBs over an IWAE run when they are appended to lists).
    out = {name: torch.empty(len(x)) for name in objective.Evidence._fields}
    out["mean"] = torch.empty(len(x), model.cfg.latent_dim)
    for start in tqdm(range(0, len(x), rows), desc=f"evidence K={samples}", disable=not progress, leave=False):
        batch = x[start : start + rows].to(device)  # (B, D)
        eps = torch.randn((samples, len(batch), model.cfg.latent_dim), generator=generator).to(device)  # (K, B, Z)
        mean, log_var = model.encoder(batch)
        terms = objective.evidence(mean, log_var, eps, model.log_px_given_z(batch))
        for name, value in (*terms._asdict().items(), ("mean", mean)):
            out[name][start : start + len(batch)] = value.cpu()
    return out


def _checkpoint(run: Run, cfg: Config) -> dict:
    """Everything a resumed run needs to continue exactly: weights, their average, optimizer,
    schedule, the generator of every draw, and the epoch counters."""
    return {
        "config": cfg.to_dict(),
        "command": run.command,
        "model": run.model.state_dict(),
        "ema": None if run.ema is None else run.ema.state_dict(),
        "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(),
        "generator": run.generator.get_state(),
        **run.state,
    }


def make_ema(model: VAE, decay: float) -> torch.optim.swa_utils.AveragedModel | None:
    """The weights' exponential moving average (updated after every step), or None when decay is 0."""
    if not decay:
        return None
    return torch.optim.swa_utils.AveragedModel(model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay))


@dataclass
class Run:
    """What one training run carries from epoch to epoch (on this rank)."""

    model: VAE
    net: torch.nn.Module  # the model, or its DistributedDataParallel wrapper under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    generator: torch.Generator  # every draw of the run: order, binarization, ε
    world: distributed.World
    device: str
    command: str | None
    ema: torch.optim.swa_utils.AveragedModel | None = None  # the weights evaluated and exported, when kept
    state: dict = field(
        default_factory=lambda: {
            "epoch": 0,
            "step": 0,
            "best_val_bound": -math.inf,
            "best_epoch": -1,
            "stale_epochs": 0,
            "initialized_from": None,  # what the manifest records of a served model the run started from
        }  # fmt: skip
    )


def fit(cfg: Config, run_dir: Path, resume: bool = False, progress: bool = True, command: str | None = None) -> Path:
    """Train with early stopping on the validation ELBO; returns the best checkpoint's path.

    ``command`` (the CLI line that reproduces this run) is kept in the checkpoints for the manifest.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    splits = load_data(cfg, run_dir, progress)
    cfg = fitted_to(cfg, splits)
    validation = prepare_eval_images(cfg, splits.validation)
    run = _start(cfg, run_dir, resume, command)
    state, max_steps = run.state, cfg.train.max_steps or math.inf
    while (
        state["epoch"] < cfg.train.epochs and state["stale_epochs"] < cfg.train.patience and state["step"] < max_steps
    ):
        started = time.perf_counter()
        totals, beta = _train_epoch(run, cfg, splits.train, progress)
        record = _epoch_record(run, cfg, validation, totals, beta, started)
        _select(state, record, warming_up=beta < cfg.train.beta)
        if run.world.is_main:  # rank 0 writes checkpoints and metrics; the others hold the same weights
            _save(run, cfg, run_dir, record)
        log.info(
            "epoch %d: train loss %.2f, val bound %.2f (best %.2f @ %d), %.1fs",
            *(record["epoch"], record["train_loss"], record["val_bound"], state["best_val_bound"], state["best_epoch"]),
            record["seconds"],
        )
    if state["stale_epochs"] >= cfg.train.patience:
        log.info("early stop: no validation improvement for %d epochs", cfg.train.patience)
    return run_dir / "best.pt"


def _start(cfg: Config, run_dir: Path, resume: bool, command: str | None) -> Run:
    """A fresh run, or with ``resume`` the run dir's last checkpoint exactly as it was saved."""
    world = distributed.current()  # one process, or this rank of a torchrun job
    device = distributed.rank_device(use_device(cfg), world)
    last, metrics_path = run_dir / "last.pt", run_dir / "metrics.jsonl"
    resuming = resume and last.is_file()
    model = make_model(cfg)
    initialized_from = warm_start(model, cfg) if cfg.train.init_from and not resuming else None
    model = model.to(device)
    net = distributed.wrap(model, world, device)  # DDP under torchrun: gradients averaged over ranks
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.train.epochs, eta_min=cfg.train.lr_min)
    generator = torch.Generator().manual_seed(cfg.train.seed)
    run = Run(model, net, optimizer, scheduler, generator, world, device, command, make_ema(model, cfg.train.ema_decay))
    run.state["initialized_from"] = initialized_from
    if resuming:
        ckpt = torch.load(last, map_location=device, weights_only=False)
        if ckpt["config"] != cfg.to_dict():
            raise ConfigError(f"{last} was trained with a different config; start a new --runs-dir or drop --resume")
        model.load_state_dict(ckpt["model"])
        if run.ema is not None:
            run.ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        run.state = {k: ckpt.get(k, v) for k, v in run.state.items()}
        run.command = ckpt.get("command") or command
        log.info("resumed from %s at epoch %d", last, run.state["epoch"])
    elif metrics_path.exists() and world.is_main:
        metrics_path.unlink()  # a fresh run starts a fresh log
    return run


def warm_start(model: VAE, cfg: Config) -> dict:
    """Start from a served model's weights (``train.init_from``), whose model config must be this
    run's. Returns what the manifest keeps of that model, so its provenance outlives its folder."""
    source = Path(cfg.train.init_from)
    source_cfg, source_model, manifest = load_served_model(source)
    mine, theirs = cfg.model, source_cfg.model
    differ = [f"model.{f.name}" for f in fields(mine) if getattr(mine, f.name) != getattr(theirs, f.name)]
    if differ:
        raise ConfigError(f"train.init_from: {source} was trained with a different {', '.join(differ)} than this run")
    model.load_state_dict(source_model.state_dict())
    log.info("starting from the weights of %s (test NLL %s)", source, manifest["metrics"].get("test_nll"))
    return {
        "model_dir": str(source),
        "command": manifest["command"],
        "git_commit": manifest.get("git_commit"),
        "weights_sha256": manifest["weights"]["sha256"],
        "training": manifest["training"],
        "test_nll": manifest["metrics"].get("test_nll"),
    }


def _train_epoch(run: Run, cfg: Config, train: torch.Tensor, progress: bool) -> tuple[torch.Tensor, float]:
    """One pass over the training set; returns (loss sum, ELBO sum, rows) over every rank, and the last β."""
    n, batch_size, z_dim, k = len(train), cfg.train.batch_size, cfg.model.latent_dim, cfg.train.iwae_samples
    steps_per_epoch = math.ceil(n / batch_size)
    max_steps = cfg.train.max_steps or math.inf
    run.model.train()
    order = torch.randperm(n, generator=run.generator)
    totals = torch.zeros(3, dtype=torch.float64)  # loss sum, ELBO sum, rows: this rank's share
    description = f"epoch {run.state['epoch'] + 1}/{cfg.train.epochs}"
    bar = tqdm(range(steps_per_epoch), desc=description, disable=not progress, leave=False)
    beta = cfg.train.beta
    for i in bar:
        x = train[order[i * batch_size : (i + 1) * batch_size]]  # (B, D): the global batch, drawn alike on every rank
        if cfg.model.likelihood == "bernoulli":
            x = binarize_dynamic(x, run.generator)
        eps = torch.randn((k, len(x), z_dim), generator=run.generator)  # (K, B, Z)
        part = distributed.shard(len(x), run.world)  # this rank's rows (all of them in one process)
        beta = _beta(cfg, run.state["step"], steps_per_epoch)
        terms = run.net(x[part].to(run.device), eps[:, part].to(run.device))
        shard_loss = objective.loss(terms, beta, importance_weighted=k > 1)  # mean over this rank's rows
        # DDP averages gradients over ranks; scaled so, the average is that of the global batch's mean.
        batch_loss = shard_loss * (len(terms.elbo) * run.world.size / len(x))
        run.optimizer.zero_grad(set_to_none=True)
        batch_loss.backward()
        run.optimizer.step()
        if run.ema is not None:
            run.ema.update_parameters(run.model)
        run.state["step"] += 1
        rows = len(terms.elbo)
        totals += torch.tensor([shard_loss.item() * rows, terms.elbo.sum().item(), rows], dtype=torch.float64)
        bar.set_postfix(loss=f"{totals[0] / totals[2]:.2f}")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("step %d parameters %s", run.state["step"], fingerprint(run.model))
        if run.state["step"] >= max_steps:
            break
    run.scheduler.step()
    return distributed.all_sum(totals), beta  # every rank's rows


def _epoch_record(
    run: Run, cfg: Config, validation: torch.Tensor, totals: torch.Tensor, beta: float, started: float
) -> dict:
    """The epoch's line of metrics.jsonl: training averages, the validation ELBO's terms and the
    bound trained (L_K with the training's K draws; the ELBO when K = 1), of the weights' moving
    average when one is kept: it is what gets selected and exported."""
    evaluated = run.model if run.ema is None else run.ema.module
    k = cfg.train.iwae_samples
    val = evidence_over(evaluated, validation, samples=k, rows=max(1, 1000 // k), seed=1, device=run.device)
    run.state["epoch"] += 1
    record = {
        "epoch": run.state["epoch"],
        "train_loss": float(totals[0] / totals[2]),
        "train_elbo": float(totals[1] / totals[2]),
        "val_elbo": float(val["elbo"].mean()),
        "val_bound": float(val["log_likelihood"].mean()),
        "val_reconstruction": float(val["reconstruction"].mean()),
        "val_kl": float(val["kl"].mean()),
        "beta": beta,
        "lr": run.optimizer.param_groups[0]["lr"],
        "seconds": round(time.perf_counter() - started, 2),
    }
    if evaluated.sigma is not None:
        record["sigma"] = evaluated.sigma
    return record


def _select(state: dict, record: dict, warming_up: bool) -> None:
    """Early stopping on the bound trained (the true ELBO, or L_K): warm-up epochs (β below its
    target) count only as a fallback."""
    if state["best_epoch"] < 0 or (not warming_up and record["val_bound"] > state["best_val_bound"]):
        state.update(best_val_bound=record["val_bound"], best_epoch=record["epoch"], stale_epochs=0)
    elif not warming_up:
        state["stale_epochs"] += 1


def _save(run: Run, cfg: Config, run_dir: Path, record: dict) -> None:
    ckpt = _checkpoint(run, cfg)
    torch.save(ckpt, run_dir / "last.pt")
    if run.state["best_epoch"] == record["epoch"]:
        torch.save(ckpt, run_dir / "best.pt")
    with (run_dir / "metrics.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


def fingerprint(model: torch.nn.Module) -> str:
    """sha256 of every parameter's bytes: equal on two ranks only if their weights are bit-identical."""
    digest = hashlib.sha256()
    for p in model.parameters():
        digest.update(p.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def load_checkpoint(path: Path, device: str = "cpu") -> tuple[Config, VAE, dict]:
    """The checkpoint's model: the weights' moving average where the run kept one, else the weights."""
    ckpt = torch.load(path, map_location=device, weights_only=False)
    cfg = Config.from_dict(ckpt["config"])
    model = VAE(cfg.model).to(device)
    if ckpt.get("ema") is not None:
        prefix = "module."  # AveragedModel keeps the averaged VAE as .module, beside its step count
        model.load_state_dict({k[len(prefix) :]: v for k, v in ckpt["ema"].items() if k.startswith(prefix)})
    else:
        model.load_state_dict(ckpt["model"])
    model.eval()
    return cfg, model, ckpt


def dequantize(x: torch.Tensor, seed: int) -> torch.Tensor:
    """8-bit pixels in [0, 1] -> (x·255 + u)/256 with u ~ U[0, 1): the continuous data bits/dim assume."""
    u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed))
    return (torch.round(x * 255) + u) / 256


def iwae_evidence(cfg: Config, model: VAE, x: torch.Tensor, device: str, progress: bool) -> dict[str, torch.Tensor]:
    """The evaluation's IWAE pass over ``x``: the config's K, steps of about ``iwae_batch`` images
    at K = 1000, and one seed for ε, so every pass over the test images draws the same noise."""
    k = cfg.eval.iwae_samples
    rows = max(1, cfg.eval.iwae_batch * 1000 // k)
    return evidence_over(model, x, samples=k, rows=rows, seed=cfg.train.seed + 2, device=device, progress=progress)


def measured_bits_per_dim(cfg: Config, model: VAE, x: torch.Tensor, nll: float, device: str, progress: bool) -> float:
    """Bits/dim of the test images ``x`` (as ``prepare_eval_images`` gives them) whose IWAE NLL is
    ``nll``: for binarized data that NLL in bits; for 8-bit data (Gaussian) the NLL of uniformly
    dequantized pixels, which takes one more IWAE pass."""
    if cfg.model.likelihood == "gaussian":
        dequantized = iwae_evidence(cfg, model, dequantize(x, seed=cfg.train.seed + 3), device, progress)
        nll = -float(dequantized["log_likelihood"].mean())
    return bits_per_dim(nll, x.shape[1], cfg.model.likelihood)


def evaluate(cfg: Config, model: VAE, splits: Splits, device: str = "cpu", progress: bool = True) -> dict:
    """Test-set metrics in nats: ELBO, its two terms, IWAE log p(x), the gap, active units; and bits/dim."""
    x = prepare_eval_images(cfg, splits.test)
    terms = iwae_evidence(cfg, model, x, device, progress)
    nll = -float(terms["log_likelihood"].mean())
    # Active units (Burda et al. 2016): Cov_x(E_q[z]) per latent dimension above a threshold.
    activity = terms["mean"].var(0)  # (Z,)
    metrics = {
        "test_elbo": float(terms["elbo"].mean()),
        "test_reconstruction": float(terms["reconstruction"].mean()),
        "test_kl": float(terms["kl"].mean()),
        "test_log_likelihood": float(terms["log_likelihood"].mean()),
        "test_nll": nll,
        "test_bits_per_dim": measured_bits_per_dim(cfg, model, x, nll, device, progress),
        "test_gap": float((terms["log_likelihood"] - terms["elbo"]).mean()),
        "iwae_samples": cfg.eval.iwae_samples,
        "active_units": int((activity > cfg.eval.active_unit_threshold).sum()),
        "latent_dim": cfg.model.latent_dim,
        "latent_activity": [round(float(a), 5) for a in activity],
        "test_images": len(x),
    }
    if model.sigma is not None:
        metrics["sigma"] = model.sigma
    return metrics
