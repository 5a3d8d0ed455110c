"""JSON straight from numpy arrays with orjson: no ``.tolist()`` and no pydantic on the hot path."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
import orjson
from fastapi.responses import JSONResponse
from PIL import Image


class NumpyJSONResponse(JSONResponse):
    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


def png_base64(images: np.ndarray) -> list[str]:
    """(N, 784) in [0, 1] -> base64 8-bit grayscale 28×28 PNGs."""
    pixels = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    encoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L").save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def images_payload(images: np.ndarray, fmt: str) -> np.ndarray | list[str]:
    return png_base64(images) if fmt == "png" else np.ascontiguousarray(images.reshape(-1, 28, 28))
