"""Whatever a caller holds as images -> one float32 batch in [0, 1], numpy/PIL order.

Accepted: a numpy array (uint8 0–255 or float 0–1; one image (H, W) or (H, W, C), or a batch
(N, H, W) or (N, H, W, C)), a PIL image, a path to an image file, or a list of any of those.
A 3-D array whose last axis is 3 or 4 is one colour image; otherwise a 3-D array is a batch of
grayscale images. Alpha is dropped. PIL images and files need Pillow (the ``images`` extra).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

Images = object  # np.ndarray | PIL.Image.Image | str | os.PathLike | list of those


def batch(images: Images) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) float32 in [0, 1]."""
    if isinstance(images, (list, tuple)):
        if not images:
            raise ValueError("no images given")
        parts = [batch(item) for item in images]
        shapes = {p.shape[1:] for p in parts}
        if len(shapes) > 1:
            raise ValueError(f"images of different shapes: {sorted(shapes)}")
        return np.concatenate(parts)
    if isinstance(images, (str, os.PathLike)):
        return batch(_open(Path(images)))
    if not isinstance(images, np.ndarray) and hasattr(images, "mode") and hasattr(images, "size"):  # a PIL image
        image = images.convert("RGB") if images.mode not in ("1", "L", "I", "I;16", "F") else images.convert("L")
        return batch(np.asarray(image))
    array = np.asarray(images)
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4)):
        array = array[None]  # one image
    if array.ndim not in (3, 4):
        raise ValueError(f"expected images of shape (H, W), (H, W, C), (N, H, W) or (N, H, W, C), got {array.shape}")
    if array.ndim == 4 and array.shape[-1] == 4:
        array = array[..., :3]  # alpha dropped
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    return array.astype(np.float32)


def _open(path: Path):
    try:
        from PIL import Image
    except ImportError:
        raise ImportError(f"reading {path} needs Pillow: pip install 'vae-serve-client[images]'") from None
    with Image.open(path) as image:
        image.load()
        return image.copy()


def png(image: np.ndarray) -> bytes:
    """An (H, W) or (H, W, 3) image in [0, 1] as 8-bit PNG bytes, with the standard library alone."""
    import struct
    import zlib

    pixels = np.clip(np.rint(np.asarray(image) * 255), 0, 255).astype(np.uint8)
    height, width = pixels.shape[:2]
    colour = 2 if pixels.ndim == 3 else 0  # RGB or grayscale
    rows = b"".join(b"\x00" + row.tobytes() for row in pixels.reshape(height, -1))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def grid(images: np.ndarray, columns: int = 8) -> np.ndarray:
    """(N, H, W[, 3]) -> one image with 1-pixel gutters, ``columns`` across."""
    n, h, w = images.shape[:3]
    rows = -(-n // columns)
    canvas = np.ones((rows * (h + 1) - 1, columns * (w + 1) - 1, *images.shape[3:]), dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        canvas[r * (h + 1) : r * (h + 1) + h, c * (w + 1) : c * (w + 1) + w] = image
    return canvas
