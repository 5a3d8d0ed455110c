"""Arrays on the wire: NPY bodies in, NPY or NPZ answers out (numpy's own formats, no float text)."""

from __future__ import annotations

import io

import numpy as np

NPY = "application/x-npy"
NPZ = "application/x-npz"
JSON = "application/json"


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array, dtype=np.float32), allow_pickle=False)
    return buffer.getvalue()


def arrays(content: bytes, media_type: str) -> dict[str, np.ndarray]:
    """An NPZ answer as a dict of arrays (an NPY answer as ``{"": array}``)."""
    if media_type.startswith(NPZ):
        with np.load(io.BytesIO(content), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    return {"": np.load(io.BytesIO(content), allow_pickle=False)}
