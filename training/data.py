"""Datasets: the IDX file format, Fashion-MNIST from Debian's package, MNIST downloads, and your
own images (``training/images.py``).

Pixels are scaled to [0, 1] float32 and flattened in numpy/PIL order to (N, H·W·C), as the
service receives them. Bernoulli models train on dynamically binarized pixels and are evaluated
on a statically binarized test set.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .images import load_images

log = logging.getLogger(__name__)

# IDX type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
DEBIAN_DIRS = {"fashion-mnist": Path("/usr/share/datasets/fashion-mnist")}
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)
MNIST_SHA256 = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip or not), checking the magic number and that the size matches."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: corrupt gzip stream ({exc})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes, {ndim} dimensions)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(raw) != expected:
        kind = "truncated" if len(raw) < expected else "has trailing bytes"
        raise DataError(f"{path}: {kind}: shape {shape} needs {expected} bytes, file has {len(raw)}")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray, compress: bool | None = None) -> None:
    """Write an IDX file (gzip if the name ends in .gz); used by tests and small fixtures."""
    path = Path(path)
    code = {np.dtype(v).newbyteorder("="): k for k, v in IDX_DTYPES.items()}[array.dtype.newbyteorder("=")]
    header = bytes([0, 0, code, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.dtype(IDX_DTYPES[code])).tobytes()
    compress = path.suffix == ".gz" if compress is None else compress
    path.write_bytes(gzip.compress(payload, mtime=0) if compress else payload)


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download(filename: str, sha256: str, cache_dir: Path, mirrors=MNIST_MIRRORS, timeout: float = 30.0) -> Path:
    """Fetch ``filename`` into ``cache_dir``, verified by sha256, trying each mirror in turn."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / filename
    if target.is_file() and sha256_file(target) == sha256:
        return target
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + filename
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{filename}.")
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
                shutil.copyfileobj(response, out)
            got = sha256_file(tmp)
            if got != sha256:
                failures.append(f"{url}: sha256 {got} != expected {sha256}")
                log.warning("checksum mismatch from %s; trying the next mirror", url)
                continue
            os.replace(tmp, target)
            log.info("downloaded %s from %s", filename, url)
            return target
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            failures.append(f"{url}: {exc}")
            log.warning("download from %s failed (%s); trying the next mirror", url, exc)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DataError(f"could not download {filename}:\n  " + "\n  ".join(failures))


def default_cache_dir() -> Path:
    return Path(os.environ.get("VAE_DATA_CACHE", Path.home() / ".cache" / "vae-serve"))


def dataset_files(dataset: str, data_dir: str | None = None, mirrors=None) -> dict[str, Path]:
    """Paths of the four IDX files: from ``data_dir``, Debian's package, or (MNIST) a download."""
    if data_dir is not None:
        root = Path(data_dir)
        paths = {key: root / name for key, name in FILES.items()}
        missing = [str(p) for p in paths.values() if not p.exists()]
        if missing:
            raise DataError(f"--data-dir {root}: missing {', '.join(missing)}")
        return paths
    if dataset == "fashion-mnist":
        root = DEBIAN_DIRS[dataset]
        if not root.is_dir():
            raise DataError(f"{root} not found: install Debian's dataset-fashion-mnist or pass --data-dir")
        return {key: root / name for key, name in FILES.items()}
    if dataset == "mnist":
        cache = default_cache_dir() / "mnist"
        mirrors = MNIST_MIRRORS if mirrors is None else mirrors
        return {key: download(name, MNIST_SHA256[name], cache, mirrors) for key, name in FILES.items()}
    raise DataError(f"unknown dataset {dataset!r}; expected 'fashion-mnist' or 'mnist'")


FASHION_CLASSES = ("T-shirt", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Boot")


@dataclass(frozen=True)
class Splits:
    """Images as float32 in [0, 1], (N, H·W·C); labels int64 (N,)."""

    train: torch.Tensor
    train_labels: torch.Tensor
    validation: torch.Tensor
    validation_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    sha256: str  # identifies the data a model saw
    image_shape: tuple[int, int, int] = (28, 28, 1)  # (H, W, C)
    classes: tuple[str, ...] = tuple(str(c) for c in range(10))  # label -> name, for the latent map


def _images(path: Path) -> torch.Tensor:
    array = read_idx(path)
    if array.ndim != 3 or array.shape[1:] != (28, 28):
        raise DataError(f"{path}: expected images of shape (N, 28, 28), got {array.shape}")
    return torch.from_numpy(array.reshape(len(array), -1).astype(np.float32) / 255.0)


def _labels(path: Path, n: int) -> torch.Tensor:
    array = read_idx(path)
    if array.shape != (n,):
        raise DataError(f"{path}: expected {n} labels, got shape {array.shape}")
    return torch.from_numpy(array.astype(np.int64))


def load_splits(data, cache_dir: Path | None = None, progress: bool = False) -> Splits:
    """The splits of ``data`` (a DataConfig): IDX datasets' own, or seeded fractions of your images."""
    if data.dataset == "images":
        return image_splits(data, cache_dir, progress)
    splits = idx_splits(data.dataset, data.data_dir, data.validation_size, data.subset)
    if data.dataset == "fashion-mnist":
        return dataclasses.replace(splits, classes=FASHION_CLASSES)
    return splits


def image_splits(data, cache_dir: Path | None, progress: bool) -> Splits:
    """Test, validation and training shares of a seeded permutation of your images."""
    images = load_images(Path(data.path), data.image_size, data.channels, cache_dir, progress)
    n = len(images.pixels)
    n_test, n_val = round(n * data.test_fraction), round(n * data.validation_fraction)
    if min(n_test, n_val, n - n_test - n_val) < 1:
        raise DataError(f"{data.path}: {n} images are too few to split into training, validation and test")
    order = np.random.default_rng(data.split_seed).permutation(n)
    x = torch.from_numpy(images.pixels.reshape(n, -1).astype(np.float32) / 255.0)  # (N, H·W·C)
    y = torch.from_numpy(images.labels)
    test, val, fit = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    if data.subset is not None:
        fit = fit[: data.subset]
    shape = tuple(int(d) for d in images.pixels.shape[1:])
    return Splits(x[fit], y[fit], x[val], y[val], x[test], y[test], images.sha256, shape, images.classes)


def idx_splits(dataset: str, data_dir: str | None, validation_size: int, subset: int | None = None) -> Splits:
    """Train / validation (the last ``validation_size`` training images) / test."""
    files = dataset_files(dataset, data_dir)
    train, test = _images(files["train_images"]), _images(files["test_images"])
    train_labels, test_labels = _labels(files["train_labels"], len(train)), _labels(files["test_labels"], len(test))
    if validation_size >= len(train):
        raise DataError(f"validation_size {validation_size} leaves no training images (of {len(train)})")
    digest = hashlib.sha256("".join(sha256_file(files[k]) for k in FILES).encode()).hexdigest()
    cut = len(train) - validation_size
    fit, fit_labels = train[:cut], train_labels[:cut]
    if subset is not None:
        fit, fit_labels = fit[:subset], fit_labels[:subset]
    return Splits(fit, fit_labels, train[cut:], train_labels[cut:], test, test_labels, digest)


def binarize_dynamic(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A fresh Bernoulli draw per pixel each time the image is seen (training)."""
    return torch.bernoulli(x, generator=generator)


def binarize_static(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """The fixed binarization used for evaluation: rand(seed) < x."""
    return (torch.rand(x.shape, generator=torch.Generator().manual_seed(seed)) < x).to(x.dtype)
