"""Frozen configuration for one model: data, model, training, evaluation and export.

A model is described by a TOML file (``training/configs/<name>.toml``) plus ``--set
section.key=value`` overrides; the resolved config is written into the checkpoint and the
manifest, so every artifact carries what it takes to rebuild it.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).parent / "configs"


DATASETS = ("fashion-mnist", "mnist", "images")


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "fashion-mnist"  # fashion-mnist | mnist | images (your own: a folder, .npy or .npz)
    data_dir: str | None = None  # IDX datasets: default Debian's /usr/share/datasets/<dataset>, or the cache
    validation_size: int = 5000  # IDX datasets: taken from the end of the training set, never from the test set
    subset: int | None = None  # use only the first N training images (smoke tests)
    path: str | None = None  # images: a folder of image files, or an .npy / .npz array (--data)
    image_size: tuple[int, ...] | None = None  # images: [H, W] to resize every image to; None: all must match
    channels: int | None = None  # images: 1 or 3; None: 3 when any image has colour, else 1
    test_fraction: float = 0.1  # images: the seeded share held out for the evaluation the manifest records
    validation_fraction: float = 0.1  # images: the seeded share for early stopping (and export's calibration)
    split_seed: int = 0


@dataclass(frozen=True)
class ModelConfig:
    image_shape: tuple[int, ...] = (28, 28, 1)  # (H, W, C); set from the data when training starts
    architecture: str = "conv"  # conv | mlp | auto (conv where H and W allow it, else mlp)
    latent_dim: int = 32
    hidden: tuple[int, ...] = (32, 64)  # conv channels, or MLP widths
    dense: int = 512  # width of the dense layer between conv stack and latent (conv only)
    likelihood: str = "bernoulli"  # bernoulli | gaussian
    sigma: float | None = None  # gaussian only: fixed σ, or None for a learned σ


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 50
    batch_size: int = 128  # the global batch: under torchrun each rank takes its share of it
    lr: float = 1e-3
    lr_min: float = 1e-4  # cosine schedule from lr down to lr_min
    beta: float = 1.0  # β = 1 is the true ELBO
    kl_warmup_epochs: int = 0  # linear warm-up of β from 0 over this many epochs
    iwae_samples: int = 1  # K draws per image: 1 trains the ELBO; K > 1 the importance-weighted bound L_K once β = 1
    ema_decay: float = 0.0  # > 0: an exponential moving average of the weights, validated, kept and exported
    init_from: str | None = None  # a served model's folder (models/<name>) whose weights start the run
    patience: int = 10  # early stopping on the validation ELBO
    seed: int = 0
    device: str = "cpu"
    threads: int | None = None  # torch intra-op threads; None = torch's default
    max_steps: int | None = None  # stop after this many optimizer steps (smoke runs); None = the epochs decide


@dataclass(frozen=True)
class EvalConfig:
    iwae_samples: int = 1000  # K for the IWAE estimate of log p(x)
    iwae_batch: int = 20  # test images per IWAE step (K × this rows through the decoder)
    active_unit_threshold: float = 0.01  # Cov_x(E_q[z]) above this: an active latent unit


@dataclass(frozen=True)
class ExportConfig:
    opset: int = 18
    parity_tolerance: float = 1e-5  # max |ort − torch| / (1 + |torch|), else export fails


@dataclass(frozen=True)
class Config:
    name: str = "fashion-mnist"
    version: str = "1"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    export: ExportConfig = field(default_factory=ExportConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Config:
        return _build(cls, raw, "")

    def validate(self) -> Config:
        """Reject values training would choke on later, with the key named."""
        checks = [
            (self.data.dataset in DATASETS, f"data.dataset must be one of {', '.join(DATASETS)}"),
            (
                self.data.dataset != "images" or self.data.path is not None,
                "data.path is required for images: --data PATH",
            ),
            (
                self.data.image_size is None or (len(self.data.image_size) == 2 and min(self.data.image_size) >= 1),
                "data.image_size must be [H, W] of positive sizes",
            ),
            (self.data.channels in (None, 1, 3), "data.channels must be 1 or 3"),
            (
                0 < self.data.test_fraction < 1
                and 0 < self.data.validation_fraction < 1
                and self.data.test_fraction + self.data.validation_fraction < 1,
                "data.test_fraction and data.validation_fraction must be in (0, 1) and leave images to train on",
            ),
            (
                len(self.model.image_shape) == 3
                and min(self.model.image_shape) >= 1
                and self.model.image_shape[2] in (1, 3),
                "model.image_shape must be [H, W, 1] or [H, W, 3]",
            ),
            (self.data.validation_size >= 0, "data.validation_size must be >= 0"),
            (self.data.subset is None or self.data.subset > 0, "data.subset must be > 0"),
            (self.model.architecture in ("conv", "mlp", "auto"), "model.architecture must be 'conv', 'mlp' or 'auto'"),
            (self.model.latent_dim >= 1, "model.latent_dim must be >= 1"),
            (
                len(self.model.hidden) >= 1 and all(h >= 1 for h in self.model.hidden),
                "model.hidden must be positive widths",
            ),
            (self.model.likelihood in ("bernoulli", "gaussian"), "model.likelihood must be 'bernoulli' or 'gaussian'"),
            (self.model.sigma is None or self.model.sigma > 0, "model.sigma must be > 0 (or unset for a learned σ)"),
            (self.train.epochs >= 1, "train.epochs must be >= 1"),
            (self.train.batch_size >= 1, "train.batch_size must be >= 1"),
            (self.train.max_steps is None or self.train.max_steps >= 1, "train.max_steps must be >= 1 (or unset)"),
            (self.train.lr > 0, "train.lr must be > 0"),
            (self.train.beta >= 0, "train.beta must be >= 0"),
            (self.train.kl_warmup_epochs >= 0, "train.kl_warmup_epochs must be >= 0"),
            (self.train.iwae_samples >= 1, "train.iwae_samples must be >= 1"),
            (0 <= self.train.ema_decay < 1, "train.ema_decay must be in [0, 1) (0: no moving average)"),
            (
                self.train.device == "cpu" or self.train.device.startswith("cuda"),
                "train.device must be 'cpu' or 'cuda[:N]'",
            ),
            (self.eval.iwae_samples >= 1, "eval.iwae_samples must be >= 1"),
            (self.export.parity_tolerance > 0, "export.parity_tolerance must be > 0"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        return self


def _build(cls: type, raw: dict[str, Any], prefix: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(raw) - set(known)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(prefix + k for k in sorted(unknown))}")
    kwargs = {}
    for name, value in raw.items():
        f = known[name]
        if dataclasses.is_dataclass(f.default_factory):  # a nested section
            if not isinstance(value, dict):
                raise ConfigError(f"{prefix}{name} must be a table")
            kwargs[name] = _build(f.default_factory, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, f, f"{prefix}{name}")
    return cls(**kwargs)


def _coerce(value: Any, f: dataclasses.Field, key: str) -> Any:
    """Check a value against the field's type; lists become tuples so the config stays hashable."""
    annotation = str(f.type)
    if value is None:
        if "None" in annotation:
            return None
        raise ConfigError(f"{key} may not be empty")
    if "tuple" in annotation:
        if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{key} must be a list of integers, got {value!r}")
        return tuple(value)
    if annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if annotation.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if annotation.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if annotation.startswith("str"):
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def parse_override(text: str) -> tuple[list[str], Any]:
    """``train.epochs=5`` -> (["train", "epochs"], 5); the value is read as TOML, else as a string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw_value = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has no key")
    raw_value = raw_value.strip()
    if raw_value.lower() in ("none", "null", ""):
        return path, None
    try:
        value = tomllib.loads(f"v = {raw_value}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw_value
    return path, value


def load_config(path_or_name: str | Path, overrides: list[str] = ()) -> Config:
    """Read a config by path or by shipped name (``fashion-mnist``), then apply overrides."""
    path = Path(path_or_name)
    if not path.suffix:
        path = CONFIG_DIR / f"{path_or_name}.toml"
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.toml")))
        raise ConfigError(f"config {str(path_or_name)!r} not found (a .toml path, or one of: {shipped})")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    for override in overrides:
        keys, value = parse_override(override)
        node = raw
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {override!r}: {k} is not a section")
        node[keys[-1]] = value
    return Config.from_dict(raw).validate()
