"""Bodies in and out: JSON (orjson) or NPY, picked by Content-Type and Accept.

NPY is numpy's ``.npy`` format: a short text header (dtype, shape) and the raw array bytes, so
a batch of images crosses HTTP without a float-to-text round trip. The header is checked (dtype,
dimensions, size against the bytes present) before any array is built from the body.
"""

from __future__ import annotations

import ast
import io

import numpy as np
from fastapi import HTTPException
from fastapi.responses import Response

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
NPY_MAGIC = b"\x93NUMPY"
NPY_DTYPES = {"<f4", "<f8", "<f2"}  # little-endian float32, float64, float16
MAX_NPY_HEADER = 4096


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``; a missing header reads as JSON."""
    return (content_type or JSON).split(";")[0].strip().lower() or JSON


def negotiate(accept: str | None, offered: tuple[str, ...] = (JSON, NPY, NPZ)) -> str:
    """The offered media type the client ranks highest (``*/*`` and ``application/*`` mean JSON); else 406."""
    if not accept:
        return offered[0]
    best, best_q = None, 0.0
    for position, item in enumerate(accept.split(",")):
        kind, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        kind = kind.lower()
        if kind in ("*/*", "application/*"):
            kind = offered[0]
        if kind in offered and q > best_q:
            best, best_q = kind, q
    if best is None:
        raise HTTPException(406, f"cannot answer with {accept!r}; this endpoint returns {', '.join(offered)}")
    return best


def read_npy(body: bytes, field: str) -> np.ndarray:
    """An NPY body -> array, refusing pickles, odd dtypes and a size the header and body disagree on."""
    def bad(message: str) -> HTTPException:
        return HTTPException(422, [{"loc": ["body", field], "msg": f"{field}: {message}", "type": "npy_invalid"}])

    if not body.startswith(NPY_MAGIC) or len(body) < 10:
        raise bad("not an NPY array (the body must start with numpy's \\x93NUMPY magic; np.save writes it)")
    major = body[6]
    if major == 1:
        header_len, start = int.from_bytes(body[8:10], "little"), 10
    elif major in (2, 3):
        header_len, start = int.from_bytes(body[8:12], "little"), 12
    else:
        raise bad(f"unsupported NPY format version {major}")
    if header_len > MAX_NPY_HEADER or start + header_len > len(body):
        raise bad(f"NPY header length {header_len} is larger than the body or the {MAX_NPY_HEADER}-byte limit")
    try:
        header = ast.literal_eval(body[start:start + header_len].decode("latin1"))
        descr, fortran, shape = header["descr"], header["fortran_order"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError, UnicodeDecodeError):
        raise bad("the NPY header is not a dict with descr, fortran_order and shape") from None
    if not isinstance(descr, str) or descr not in NPY_DTYPES:
        raise bad(f"dtype {descr!r} is not supported; send little-endian float32 ('<f4'), float64 or float16")
    if not all(isinstance(d, int) and d >= 0 for d in shape) or not 1 <= len(shape) <= 4:
        raise bad(f"shape {list(shape)} is not 1 to 4 non-negative dimensions")
    dtype = np.dtype(descr)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = memoryview(body)[start + header_len:]
    if len(data) != expected:
        raise bad(f"shape {list(shape)} of {descr} needs {expected} bytes of data, the body has {len(data)}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return array.astype(np.float32)  # a copy: owned, writeable, C-ordered


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def array_response(kind: str, main: str, arrays: dict[str, np.ndarray], headers: dict[str, str]) -> Response:
    """NPY of the ``main`` array (the others' names in a header) or NPZ of all of them."""
    if kind == NPZ:
        return Response(npz_bytes(arrays), media_type=NPZ, headers=headers)
    others = ",".join(name for name in arrays if name != main)
    return Response(npy_bytes(arrays[main]), media_type=NPY,
                    headers={**headers, "X-Array": main, **({"X-Other-Arrays": others} if others else {})})
