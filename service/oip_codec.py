"""The Open Inference Protocol (KServe v2) as plain functions: metadata, infer requests with the
binary tensor data extension, and infer responses.

Each exported graph of each model is one OIP model, ``<model>-<graph>`` (``fashion-mnist-decoder``),
with the names, FP32 datatypes and shapes (-1 for dynamic axes) of its manifest. The routes in
``routes/oip.py`` run these requests through the same batchers as the REST API.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import orjson

from .errors import InvalidInput
from .jobs import Tensors
from .manifest import GraphSpec

HEADER_LENGTH = "inference-header-content-length"
EXTENSIONS = ["binary_tensor_data", "statistics"]
DATATYPE = "FP32"  # every exported graph takes and returns float32
PLATFORM = "onnxruntime_onnx"
MAX_VALUES = 2**31 - 1  # values one tensor may hold (past it, no body limit could carry it anyway)


def bad_request(message: str) -> InvalidInput:
    """A malformed infer request: the protocol answers 400 with the message."""
    return InvalidInput(message, ("body",))


def tensor_metadata(tensors: dict[str, list[int]]) -> list[dict]:
    return [{"name": name, "datatype": DATATYPE, "shape": shape} for name, shape in tensors.items()]


def model_metadata(name: str, version: str, spec: GraphSpec) -> dict:
    return {
        "name": name,
        "versions": [version],
        "platform": PLATFORM,
        "inputs": tensor_metadata(spec.inputs),
        "outputs": tensor_metadata(spec.outputs),
    }


@dataclass
class InferRequest:
    id: str | None
    inputs: Tensors
    outputs: list[str]  # in the order the client asked for (all, if it named none)
    binary: set[str]  # outputs to return as binary data
    timeout_s: float | None


def _split_body(body: bytes, header_length: str | None) -> tuple[bytes, memoryview]:
    """JSON header and binary tail, by ``Inference-Header-Content-Length`` (no header: all JSON)."""
    if header_length is None:
        return body, memoryview(b"")
    if not (header_length.strip().isascii() and header_length.strip().isdigit()):  # "²" is a digit to isdigit()
        raise bad_request(f"Inference-Header-Content-Length must be a non-negative integer, got {header_length!r}")
    length = int(header_length)
    if length > len(body):
        raise bad_request(f"Inference-Header-Content-Length {length} is longer than the body ({len(body)} bytes)")
    return body[:length], memoryview(body)[length:]


def _shape_of(name: str, item: dict, declared: list[int]) -> list[int]:
    shape = item.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise bad_request(f"input {name!r}: shape must be a list of positive integers, got {shape!r}")
    if len(shape) != len(declared) or any(d != -1 and d != s for d, s in zip(declared, shape)):
        raise bad_request(f"input {name!r}: shape {shape} does not match the model's {declared}")
    if math.prod(shape) > MAX_VALUES:  # exact: no int64 product that wraps around to a small count
        raise bad_request(f"input {name!r}: shape {shape} holds {math.prod(shape)} values, over {MAX_VALUES}")
    return shape


def _tensor(name: str, item: dict, shape: list[int], binary: memoryview, offset: int) -> tuple[np.ndarray, int]:
    """One input's array, from its ``data`` or from the binary tail at ``offset``; returns the new offset."""
    if item.get("datatype") != DATATYPE:
        raise bad_request(f"input {name!r}: datatype must be {DATATYPE}, got {item.get('datatype')!r}")
    count = math.prod(shape)
    size = (item.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if "data" in item:
            raise bad_request(f"input {name!r}: has both 'data' and binary_data_size; send one")
        if not isinstance(size, int) or size != count * 4:
            raise bad_request(
                f"input {name!r}: binary_data_size {size!r} but shape {shape} of FP32 needs {count * 4} bytes"
            )
        if offset + size > len(binary):
            raise bad_request(
                f"input {name!r}: the body ends {offset + size - len(binary)} bytes short of its binary data"
            )
        array = np.frombuffer(binary[offset : offset + size], dtype="<f4").reshape(shape).astype(np.float32)
        return array, offset + size
    if "data" not in item:
        raise bad_request(f"input {name!r}: needs 'data' or parameters.binary_data_size")
    try:
        array = np.asarray(item["data"], dtype=np.float32)
    except (ValueError, TypeError):
        raise bad_request(f"input {name!r}: data must be numbers (flattened, or nested as the shape)") from None
    if array.size != count:
        raise bad_request(f"input {name!r}: {array.size} values for shape {shape} ({count} values)")
    return array.reshape(shape), offset


def parse_infer_request(body: bytes, header_length: str | None, spec: GraphSpec) -> InferRequest:
    """An HTTP infer request: everything a malformed one can get wrong becomes a 400 that names it."""
    head, binary = _split_body(body, header_length)
    try:
        request = orjson.loads(head)
    except orjson.JSONDecodeError as exc:
        raise bad_request(f"the request is not valid JSON: {exc}") from None
    return infer_request(request, binary, spec)


def infer_request(request, binary: memoryview, spec: GraphSpec) -> InferRequest:
    """An infer request in the protocol's JSON form (inputs with ``data`` or ``binary_data_size``,
    their bytes in ``binary`` in input order), checked against the graph. gRPC's messages arrive
    here in the same form, so both transports accept and refuse exactly the same requests."""
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise bad_request("the request must be a JSON object with an 'inputs' list")
    items = {}
    for item in request["inputs"]:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise bad_request("each input must be an object with a 'name'")
        if item["name"] in items:
            raise bad_request(f"input {item['name']!r} is given twice")
        items[item["name"]] = item
    if set(items) != set(spec.inputs):
        raise bad_request(f"inputs {sorted(items)} do not match the model's {sorted(spec.inputs)}")
    inputs, offset = {}, 0
    for item in request["inputs"]:  # binary tensors follow in the order the inputs are listed
        name = item["name"]
        shape = _shape_of(name, item, spec.inputs[name])
        inputs[name], offset = _tensor(name, item, shape, binary, offset)
    if offset != len(binary):
        raise bad_request(f"{len(binary) - offset} bytes of binary data after the last input's")
    batch = {inputs[n].shape[spec.batch_axes[n]] for n in inputs}
    if len(batch) != 1:
        raise bad_request(f"inputs disagree on the batch size: {sorted(batch)}")
    return InferRequest(
        id=request.get("id") if isinstance(request.get("id"), str) else None,
        inputs=inputs,
        timeout_s=_timeout(request.get("parameters")),
        **_requested_outputs(request, spec),
    )


def _timeout(parameters) -> float | None:
    """``parameters.timeout`` in microseconds, as Triton reads it."""
    value = (parameters or {}).get("timeout") if isinstance(parameters, dict) else None
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise bad_request(f"parameters.timeout must be a positive integer (microseconds), got {value!r}")
    return value / 1e6


def _requested_outputs(request: dict, spec: GraphSpec) -> dict:
    everything = bool((request.get("parameters") or {}).get("binary_data_output"))
    asked = request.get("outputs")
    if asked is None:
        return {"outputs": list(spec.outputs), "binary": set(spec.outputs) if everything else set()}
    if not isinstance(asked, list) or not all(isinstance(o, dict) and isinstance(o.get("name"), str) for o in asked):
        raise bad_request("outputs must be a list of objects with a 'name'")
    unknown = [o["name"] for o in asked if o["name"] not in spec.outputs]
    if unknown:
        raise bad_request(f"unknown outputs {unknown}; the model has {list(spec.outputs)}")
    binary = {o["name"] for o in asked if everything or (o.get("parameters") or {}).get("binary_data")}
    return {"outputs": [o["name"] for o in asked], "binary": binary}


def infer_response(model: str, version: str, request: InferRequest, results: Tensors) -> tuple[bytes, dict[str, str]]:
    """The JSON header, then the binary outputs in order; headers say where the JSON ends."""
    outputs, blobs = [], []
    for name in request.outputs:
        array = np.ascontiguousarray(results[name], dtype=np.float32)
        entry = {"name": name, "datatype": DATATYPE, "shape": list(array.shape)}
        if name in request.binary:
            blob = array.astype("<f4", copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1)
        outputs.append(entry)
    response = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.id is not None:
        response["id"] = request.id
    head = orjson.dumps(response, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return head, {"content-type": "application/json"}
    return head + b"".join(blobs), {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(head))}
