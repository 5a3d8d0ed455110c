"""Your own images: a folder of image files, or an ``.npy`` / ``.npz`` array, as uint8 (N, H, W, C).

- A folder is searched recursively for every file Pillow reads. When images sit in subfolders one
  level down, those folders' names are class labels (used only by the report's latent map).
- Every mode is converted, never rejected: palette, RGBA and grayscale-with-alpha (composited
  over black), 16-bit (scaled to 8 bits). Channels: ``channels`` 1 or 3, by default 3 when any
  image has colour, else 1.
- All images must share one size unless ``image_size`` (H, W) is given; then each is resized.
- A file Pillow cannot read stops the load with a DataError naming the file and why: nothing
  trains on half-read data.
- Decoding 60,000 files is done once: the result is cached beside the run, keyed by the files'
  names, sizes and mtimes (and the size and channels asked for), and reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .errors import DataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass(frozen=True)
class ImageSet:
    pixels: np.ndarray  # (N, H, W, C) uint8
    labels: np.ndarray  # (N,) int64; 0 everywhere when there are no class folders
    classes: tuple[str, ...]  # label -> name ("" when there are no class folders)
    sha256: str  # identifies the data a model saw


def load_images(path: Path, image_size: tuple[int, int] | None, channels: int | None, cache_dir: Path | None,
                progress: bool = False) -> ImageSet:  # fmt: skip
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (--data takes a folder of images, an .npy or an .npz)")
    if path.is_dir():
        return _from_folder(path, image_size, channels, cache_dir, progress)
    if path.suffix in (".npy", ".npz"):
        return _from_array(path, image_size, channels)
    raise DataError(f"{path}: expected a folder of images, an .npy or an .npz file")


# ---- arrays ---------------------------------------------------------------------------------------


def _from_array(path: Path, image_size, channels) -> ImageSet:
    """(N, H, W) or (N, H, W, C), uint8 0–255 or float in [0, 1]."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            names = loaded.files
            if not names:
                raise DataError(f"{path}: the archive holds no array")
            array = loaded["images"] if "images" in names else loaded[names[0]]
        else:
            array = loaded
    except (ValueError, OSError, EOFError) as exc:
        raise DataError(f"{path}: cannot read the array ({exc})") from None
    if array.ndim == 3:
        array = array[..., None]
    if array.ndim != 4 or array.shape[3] not in (1, 3, 4) or len(array) == 0:
        raise DataError(f"{path}: expected (N, H, W) or (N, H, W, C) images with C 1, 3 or 4, got shape {array.shape}")
    if array.dtype == np.uint8:
        pixels = array
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise DataError(f"{path}: float images must be finite values in [0, 1]")
        pixels = np.rint(array * 255).astype(np.uint8)
    else:
        raise DataError(f"{path}: dtype {array.dtype} is not uint8 (0–255) or float (0–1)")
    if pixels.shape[3] == 4:
        pixels = pixels[..., :3]  # alpha dropped, as with files below (composited over black)
    pixels = _shape(pixels, image_size, channels, str(path))
    digest = hashlib.sha256(pixels.tobytes()).hexdigest()
    return ImageSet(pixels, np.zeros(len(pixels), np.int64), ("",), digest)


def _shape(pixels: np.ndarray, image_size, channels, where: str) -> np.ndarray:
    """Resize (when asked) and set the channels of a (N, H, W, C) uint8 stack."""
    if image_size is not None and pixels.shape[1:3] != tuple(image_size):
        mode = "L" if pixels.shape[3] == 1 else "RGB"
        pixels = np.stack(
            [_resize(Image.fromarray(p.squeeze(-1) if mode == "L" else p, mode), image_size) for p in pixels]
        )
        pixels = pixels.reshape(len(pixels), *image_size, -1)
    want = channels or pixels.shape[3]
    if want == pixels.shape[3]:
        return pixels
    if want == 3:
        return np.repeat(pixels, 3, axis=3)
    gray = np.rint(pixels.astype(np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32))  # ITU-R 601, as PIL
    return gray.clip(0, 255).astype(np.uint8)[..., None]


def _resize(image: Image.Image, image_size) -> np.ndarray:
    h, w = image_size
    return np.asarray(image.resize((w, h), Image.Resampling.LANCZOS))


# ---- folders --------------------------------------------------------------------------------------


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def _classes(root: Path, files: list[Path]) -> tuple[tuple[str, ...], np.ndarray]:
    """Subfolder names one level down as labels, when every image sits in one."""
    firsts = [p.relative_to(root).parts for p in files]
    if all(len(parts) >= 2 for parts in firsts):
        names = tuple(sorted({parts[0] for parts in firsts}))
        index = {name: i for i, name in enumerate(names)}
        return names, np.asarray([index[parts[0]] for parts in firsts], np.int64)
    return ("",), np.zeros(len(files), np.int64)


def _from_folder(root: Path, image_size, channels, cache_dir: Path | None, progress: bool) -> ImageSet:
    files = _files(root)
    if not files:
        raise DataError(f"{root}: no files found")
    key = _cache_key(root, files, image_size, channels)
    cached = None if cache_dir is None else cache_dir / f"images-{key[:16]}.npz"
    if cached is not None and cached.is_file():
        with np.load(cached, allow_pickle=False) as archive:
            classes = tuple(json.loads(str(archive["classes"])))
            log.info("images: %d from the decode cache %s", len(archive["pixels"]), cached)
            return ImageSet(archive["pixels"], archive["labels"], classes, key)
    classes, labels = _classes(root, files)
    decoded = [_decode(p) for p in tqdm(files, desc=f"decoding {root}", disable=not progress, unit="img")]
    pixels = _stack(decoded, files, image_size, channels)
    if cached is not None:
        cache_dir.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".tmp.npz")
        np.savez(partial, pixels=pixels, labels=labels, classes=json.dumps(classes))
        partial.replace(cached)
    log.info(
        "images: %d decoded from %s (%s), classes %s", len(pixels), root, "×".join(map(str, pixels.shape[1:])), classes
    )
    return ImageSet(pixels, labels, classes, key)


def _cache_key(root: Path, files: list[Path], image_size, channels) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, image_size, channels]).encode())
    for p in files:
        stat = p.stat()
        digest.update(f"{p.relative_to(root)}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _decode(path: Path) -> np.ndarray:
    """One file -> (H, W) or (H, W, 3) uint8, whatever its mode; a DataError names a file Pillow cannot read."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_8bit(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: cannot read this image ({exc})") from None


def _to_8bit(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if image.mode.startswith("I;16") or values.max() > 255 else 1.0
        return np.rint(values / scale).clip(0, 255).astype(np.uint8)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    if image.mode in ("1", "L"):
        return np.asarray(image.convert("L"))
    return np.asarray(image.convert("RGB"))


def _stack(decoded: list[np.ndarray], files: list[Path], image_size, channels) -> np.ndarray:
    if image_size is None:
        sizes = {d.shape[:2] for d in decoded}
        if len(sizes) > 1:
            first = decoded[0].shape[:2]
            odd = next(f for f, d in zip(files, decoded) if d.shape[:2] != first)
            raise DataError(
                f"images differ in size: {files[0]} is {first[1]}×{first[0]}, {odd} is "
                f"{decoded[files.index(odd)].shape[1]}×{decoded[files.index(odd)].shape[0]}; "
                "set data.image_size = [H, W] to resize them (--set 'data.image_size=[H, W]')"
            )
    colour = any(d.ndim == 3 for d in decoded)
    want = channels or (3 if colour else 1)
    out = []
    for d in decoded:
        if image_size is not None and d.shape[:2] != tuple(image_size):
            d = _resize(Image.fromarray(d), image_size)
        if want == 3 and d.ndim == 2:
            d = np.repeat(d[..., None], 3, axis=2)
        elif want == 1 and d.ndim == 3:
            d = np.asarray(Image.fromarray(d).convert("L"))
        out.append(d.reshape(*d.shape[:2], want))
    return np.stack(out)
