"""Arrays in and out of the service: JSON, NPY, NPZ and PNG, in both directions.

An image's shape is always a parameter, ``(H, W, C)`` from the model's manifest, never a
constant. The array never goes through pydantic: a JSON list of images becomes a float32 array in
one numpy call, an NPY body is used as sent, and only the few options are validated (by the
models in ``schemas``). Every client mistake raises ``errors.InvalidInput`` naming the field.
"""

from __future__ import annotations

import ast
import base64
import binascii
import io
import json
import math
from typing import Any

import numpy as np
import orjson
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from PIL import Image
from pydantic import BaseModel, ValidationError

from .answer import Answer
from .errors import InvalidInput, NotAcceptable, UnsupportedMediaType, invalid

ImageShape = tuple[int, int, int]  # (H, W, C), C = 1 or 3

JSON = "application/json"
NPY = "application/x-npy"
NPZ = "application/x-npz"
NPY_MAGIC = b"\x93NUMPY"
NPY_DTYPES = {"<f4", "<f8", "<f2"}  # little-endian float32, float64, float16
MAX_NPY_HEADER = 4096
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MODES = {1: "L", 3: "RGB"}


def json_bytes(content: Any) -> bytes:
    """JSON straight from numpy arrays with orjson: no ``.tolist()``, no pydantic."""
    return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS)


class NumpyJSONResponse(JSONResponse):
    """FastAPI's routes answering dicts that may hold numpy arrays."""

    def render(self, content: Any) -> bytes:
        return json_bytes(content)


# ---- media types ---------------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``; a missing header reads as JSON."""
    return (content_type or JSON).split(";")[0].strip().lower() or JSON


def negotiate(accept: str | None, offered: tuple[str, ...] = (JSON, NPY, NPZ)) -> str:
    """The offered media type the client ranks highest (``*/*`` and ``application/*`` mean JSON); else 406."""
    if not accept:
        return offered[0]
    best, best_q = None, 0.0
    for item in accept.split(","):
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
        raise NotAcceptable(f"cannot answer with {accept!r}; this endpoint returns {', '.join(offered)}")
    return best


# ---- request bodies ------------------------------------------------------------------------------


def validate_options(model: type[BaseModel], data: dict, where: str) -> BaseModel:
    """``model`` from ``data``, its errors as FastAPI's 422s located in ``where`` (body or query)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise RequestValidationError([{**e, "loc": (where, *e["loc"])} for e in errors]) from None


async def read_request(call, options: type[BaseModel], array_field: str | None = None):
    """(options, array or None) of a ``hot.Call``: a JSON object, or an NPY body with the options in
    the query string.

    The array is float32 in whatever shape was sent (PNGs stay strings: their size is checked
    against the model's when ``images`` shapes them).
    """
    kind = media_type(call.headers.get("content-type"))
    body = await call.body()
    query = call.query_params
    if kind == NPY:
        if array_field is None:
            raise UnsupportedMediaType(f"{call.path} takes no array: send its options as {JSON}")
        return validate_options(options, query, "query"), read_npy(body, array_field)
    if kind != JSON and not kind.endswith("+json"):
        accepted = f"{JSON} or {NPY}" if array_field else JSON
        raise UnsupportedMediaType(f"unsupported Content-Type {kind!r}: send {accepted}")
    data = parse_json(body)
    if not isinstance(data, dict):
        raise invalid("body", message="expected a JSON object")
    both = sorted(set(query) & set(data))
    if both:
        raise invalid("query", both[0], message=f"{both[0]} is given in both the query and the body")
    array = None
    if array_field is not None:
        if array_field not in data:
            raise invalid("body", array_field, message="Field required")
        array = json_array(data.pop(array_field), array_field)
    return validate_options(options, {**query, **data}, "body"), array


def parse_json(body: bytes):
    """orjson; what it refuses goes to the stdlib parser, which reads NaN and Infinity, so that the
    check of the field holding them names it (instead of a bare "invalid JSON")."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in str(exc):  # the stdlib parser would recurse past Python's stack limit
            raise invalid("body", exc.pos, message=f"JSON nested too deeply: {exc}") from None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise invalid("body", getattr(exc, "pos", 0), message=f"JSON decode error: {exc}") from None


def json_array(value, field: str) -> np.ndarray | list:
    """A JSON list of rows -> float32 array in one numpy call. Kept as lists for ``images`` or
    ``latents`` to check against the model: base64 PNG strings, and rows of different layouts
    (one image as H·W·C numbers beside one as H rows of W), as one array per row.
    """
    if not isinstance(value, list) or not value:
        raise invalid("body", field, message=f"{field}: expected a list with at least 1 row")
    if isinstance(value[0], str):
        return value
    try:
        with np.errstate(over="ignore"):  # 1e300 becomes inf, which check_values names
            return np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError):
        pass
    rows = []
    for i, item in enumerate(value):
        try:
            with np.errstate(over="ignore"):
                rows.append(np.asarray(item, dtype=np.float32))
        except (ValueError, TypeError) as exc:
            problem = "rows of unequal length" if "inhomogeneous" in str(exc) else "not a valid number in it"
            message = f"{field}[{i}]: {problem}; expected a list of numbers or of equal-length rows"
            raise invalid("body", field, i, message=message) from None
    return rows


def stack_rows(rows: list[np.ndarray], accepted: tuple[tuple[int, ...], ...], field: str) -> np.ndarray:
    """Rows of different layouts -> one flat array, if every row has an ``accepted`` shape."""
    if all(r.shape in accepted for r in rows):
        return np.stack([r.reshape(-1) for r in rows])
    bad = next((i for i, r in enumerate(rows) if r.shape != rows[0].shape), 0)
    message = f"{field}[{bad}]: shape {list(rows[bad].shape)} differs from {field}[0]'s {list(rows[0].shape)}"
    raise invalid("body", field, bad, message=message)


def read_npy(body: bytes, field: str) -> np.ndarray:
    """An NPY body -> float32 array, refusing pickles, odd dtypes and a size the header and body disagree on."""

    def bad(message: str) -> InvalidInput:
        return InvalidInput(f"{field}: {message}", ("body", field))

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
        header = ast.literal_eval(body[start : start + header_len].decode("latin1"))
        descr, fortran, shape = header["descr"], header["fortran_order"], tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError, TypeError, UnicodeDecodeError, MemoryError, RecursionError):
        raise bad("the NPY header is not a dict with descr, fortran_order and shape") from None
    if not isinstance(descr, str) or descr not in NPY_DTYPES:
        raise bad(f"dtype {descr!r} is not supported; send little-endian float32 ('<f4'), float64 or float16")
    if not all(isinstance(d, int) and d >= 0 for d in shape) or not 1 <= len(shape) <= 4:
        raise bad(f"shape {list(shape)} is not 1 to 4 non-negative dimensions")
    dtype = np.dtype(descr)
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    data = memoryview(body)[start + header_len :]
    if len(data) != expected:
        raise bad(f"shape {list(shape)} of {descr} needs {expected} bytes of data, the body has {len(data)}")
    array = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    with np.errstate(over="ignore"):  # float64 beyond float32 becomes inf, which check_values names
        return array.astype(np.float32)  # a copy: owned, writeable, C-ordered


# ---- images and latents --------------------------------------------------------------------------


def describe(shape: ImageShape) -> str:
    """``28×28`` for grayscale, ``32×32×3`` for colour: how errors and docs name a model's images."""
    h, w, c = shape
    return f"{h}×{w}" if c == 1 else f"{h}×{w}×{c}"


def expected_image(shape: ImageShape) -> str:
    """The layouts an image may be sent in, as an error states them."""
    h, w, c = shape
    nested = f"{h} rows of {w}" if c == 1 else f"{h}×{w}×{c} nested lists"
    return f"expected {h * w * c} numbers or {nested}"


def row_shapes(shape: ImageShape) -> tuple[tuple[int, ...], ...]:
    """The shapes one image may take: flat H·W·C, H×W×C, and H×W for a grayscale model."""
    h, w, c = shape
    return ((h * w * c,), (h, w, c)) + (((h, w),) if c == 1 else ())


def images(array: np.ndarray | list, shape: ImageShape, field: str = "inputs") -> np.ndarray:
    """Images of the model's ``shape`` in [0, 1] -> (N, H·W·C) float32; base64 PNGs are decoded."""
    size = math.prod(shape)
    accepted = row_shapes(shape)
    if isinstance(array, list) and isinstance(array[0], str):
        return png_images(array, shape, field)
    if isinstance(array, list):
        array = stack_rows(array, accepted, field)
    if array.ndim < 2 or array.shape[1:] not in accepted:
        got = list(array.shape[1:]) if array.ndim >= 2 else list(array.shape)
        message = f"{field}[0]: {expected_image(shape)}, got shape {got}"
        raise invalid("body", field, 0, message=message)
    if len(array) == 0:
        raise invalid("body", field, message=f"{field}: expected at least 1 image")
    out = array.reshape(len(array), size)
    check_values(out, field, low=0.0, high=1.0)
    return out


def latents(array: np.ndarray | list, latent_dim: int, field: str = "latents") -> np.ndarray:
    """(N, latent_dim), finite -> float32."""
    if isinstance(array, list):
        if isinstance(array[0], str):
            raise invalid("body", field, 0, message=f"{field}[0]: expected {latent_dim} numbers, got a string")
        array = stack_rows(array, ((latent_dim,),), field)
    if array.ndim != 2 or array.shape[1] != latent_dim:
        got = array.shape[1:] if array.ndim >= 2 else array.shape
        message = f"{field}[0]: expected {latent_dim} numbers (the model's latent_dim), got shape {list(got)}"
        raise invalid("body", field, 0, message=message)
    if len(array) == 0:
        raise invalid("body", field, message=f"{field}: expected at least 1 latent")
    check_values(array, field)
    return array


def check_values(array: np.ndarray, field: str, low: float = -math.inf, high: float = math.inf) -> None:
    """Non-finite values (and values outside [low, high]) are named by their first position."""
    finite = np.isfinite(array)
    if not finite.all():
        i = int(np.argwhere(~finite)[0][0])
        raise invalid("body", field, i, message=f"{field}[{i}]: contains a non-finite number (NaN or infinity)")
    outside = (array < low) | (array > high)
    if outside.any():
        i, j = (int(v) for v in np.argwhere(outside)[0])
        value = float(array[i, j])
        message = f"{field}[{i}]: value {value:g} at position {j} is outside [{low:g}, {high:g}]"
        raise invalid("body", field, i, message=message)


def max_png_base64(shape: ImageShape) -> int:
    """The most base64 characters a PNG of ``shape`` may take: 64 KiB, or for large images about
    16-bit RGBA stored uncompressed (8 bytes a pixel, 4/3 in base64)."""
    return max(64 * 1024, math.prod(shape[:2]) * 11)


def png_images(items: list, shape: ImageShape, field: str = "inputs") -> np.ndarray:
    """Base64 PNGs (any mode) -> (N, H·W·C) float32 in [0, 1], converted to the model's channels.

    Each is checked before it is decoded: its encoded size, the PNG signature, and its size read
    from the IHDR header.
    """
    h, w, c = shape
    limit = max_png_base64(shape)
    out = np.empty((len(items), h * w * c), dtype=np.float32)
    for i, item in enumerate(items):

        def bad(message: str, i: int = i) -> InvalidInput:
            return invalid("body", field, i, message=f"{field}[{i}]: {message}")

        if not isinstance(item, str):
            raise bad("expected a base64 PNG string like the other inputs")
        text = item.split(",", 1)[1] if item.startswith("data:") else item  # a data: URL is fine too
        if len(text) > limit:
            raise bad(f"{len(text)} base64 characters is over the {limit} allowed for a {describe(shape)} PNG")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise bad("not valid base64") from None
        if not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 33:
            raise bad("not a PNG image (no PNG signature and IHDR header)")
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        if (width, height) != (w, h):
            raise bad(f"PNG is {width}×{height}; expected {w}×{h}")
        try:
            with Image.open(io.BytesIO(data), formats=["PNG"]) as image:
                out[i] = np.asarray(to_mode(image, PNG_MODES[c]), dtype=np.float32).reshape(-1) / 255.0
        except (OSError, ValueError, SyntaxError):
            raise bad("the PNG data is corrupt") from None
    return out


def to_mode(image: Image.Image, mode: str) -> Image.Image:
    """Any PNG mode -> L or RGB: 16-bit scaled to 8, alpha composited over black, palettes expanded."""
    if image.mode in ("I;16", "I;16B", "I"):
        image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert(mode)


# ---- answers -------------------------------------------------------------------------------------


def as_image_grid(flat: np.ndarray, shape: ImageShape) -> np.ndarray:
    """(N, H·W·C) -> (N, H, W) for grayscale, (N, H, W, C) for colour: numpy/PIL order."""
    h, w, c = shape
    return np.ascontiguousarray(flat.reshape(-1, h, w) if c == 1 else flat.reshape(-1, h, w, c))


def png_base64(images: np.ndarray) -> list[str]:
    """(N, H, W) or (N, H, W, 3) in [0, 1] -> base64 8-bit PNGs in L or RGB."""
    pixels = np.clip(np.rint(images * 255.0), 0, 255).astype(np.uint8)
    encoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image, mode="L" if image.ndim == 2 else "RGB").save(buffer, format="PNG")
        encoded.append(base64.b64encode(buffer.getvalue()).decode("ascii"))
    return encoded


def images_payload(images: np.ndarray, fmt: str) -> np.ndarray | list[str]:
    """What a JSON answer carries for images shaped by ``as_image_grid``: nested floats or PNGs."""
    return png_base64(images) if fmt == "png" else images


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def answer(kind: str, main: str, arrays: dict[str, np.ndarray], json_body: dict, headers: dict[str, str]) -> Answer:
    """The body the client's Accept asked for: JSON, the ``main`` array as NPY (the others' names in
    a header), or all of them as NPZ."""
    if kind == JSON:
        return Answer(json_bytes(json_body), headers=headers)
    if kind == NPZ:
        return Answer(npz_bytes(arrays), media_type=NPZ, headers=headers)
    others = ",".join(name for name in arrays if name != main)
    named = {**headers, "X-Array": main, **({"X-Other-Arrays": others} if others else {})}
    return Answer(npy_bytes(arrays[main]), media_type=NPY, headers=named)
