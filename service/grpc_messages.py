"""Triton's gRPC messages in and out of the protocol's JSON form, so ``oip_codec`` checks a gRPC
infer request exactly as it checks an HTTP one.

An input's ``raw_input_contents`` entry becomes HTTP's binary tensor data (``binary_data_size``
and the bytes in input order); typed ``contents`` become ``data``. Outputs go back as
``raw_output_contents``, the bytes HTTP's binary outputs carry.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from tritonclient.grpc import service_pb2

from .jobs import Tensors
from .oip_codec import DATATYPE, InferRequest, bad_request

CONTENTS = {"FP32": "fp32_contents"}  # the typed field each datatype the graphs take reads from


def _parameter(value) -> object:
    """An ``InferParameter`` (or a repository parameter) as the plain value JSON would carry."""
    kind = value.WhichOneof("parameter_choice")
    return None if kind is None else getattr(value, kind)


def parameter_keys(parameters: Mapping) -> dict:
    return {key: _parameter(value) for key, value in parameters.items()}


def infer_request_of(request: service_pb2.ModelInferRequest) -> tuple[dict, memoryview]:
    """(the request as the protocol's JSON, the binary tail its raw contents make)."""
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise bad_request(f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; send one each")
    inputs = []
    for i, tensor in enumerate(request.inputs):
        item = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.shape)}
        if raw:
            item["parameters"] = {"binary_data_size": len(raw[i])}
        elif tensor.HasField("contents"):
            field = CONTENTS.get(tensor.datatype, "fp32_contents")
            item["data"] = np.asarray(getattr(tensor.contents, field), dtype=np.float32)
        inputs.append(item)
    message = {
        "inputs": inputs,
        "outputs": [{"name": o.name} for o in request.outputs] or None,
        "parameters": parameter_keys(request.parameters),
    }
    if request.id:
        message["id"] = request.id
    if message["outputs"] is None:
        del message["outputs"]
    return message, memoryview(b"".join(raw))


def infer_response_of(
    name: str, version: str, request: InferRequest, results: Tensors
) -> service_pb2.ModelInferResponse:
    outputs, raw = [], []
    for output in request.outputs:
        array = np.ascontiguousarray(results[output], dtype=np.float32)
        outputs.append(
            service_pb2.ModelInferResponse.InferOutputTensor(name=output, datatype=DATATYPE, shape=array.shape)
        )
        raw.append(array.astype("<f4", copy=False).tobytes())
    return service_pb2.ModelInferResponse(
        model_name=name, model_version=version, id=request.id or "", outputs=outputs, raw_output_contents=raw
    )
