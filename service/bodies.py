"""Read an inference request: its options (pydantic) and its array (numpy), from JSON or NPY.

The array never goes through pydantic: a JSON list of images becomes a float32 array in one
numpy call, and an NPY body is used as sent. Only the few options are validated by the models
in ``schemas``, so a 64-image request costs a parse, not 50,000 validated floats. The same
models document the JSON body in OpenAPI (``request_doc``).
"""

from __future__ import annotations

import json

import orjson
from fastapi import HTTPException, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from .codec import JSON, NPY, NPZ, media_type, read_npy
from .schemas import IMAGE_SIDE, IMAGE_SIZE, json_array, png_images_to_array

IMAGE_ROW_SHAPES = ((IMAGE_SIZE,), (IMAGE_SIDE, IMAGE_SIDE))


def validate_options(model: type[BaseModel], data: dict, where: str) -> BaseModel:
    """``model`` from ``data``, its errors as FastAPI's 422s located in ``where`` (body or query)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": (where, *e["loc"])} for e in exc.errors(include_url=False, include_input=False)]
        ) from None


async def read_request(request: Request, options: type[BaseModel], array_field: str | None = None):
    """(options, array or None): a JSON object, or an NPY body with the options in the query string."""
    kind = media_type(request.headers.get("content-type"))
    body = await request.body()
    query = dict(request.query_params)
    if kind == NPY:
        if array_field is None:
            raise HTTPException(415, f"{request.url.path} takes no array: send its options as {JSON}")
        return validate_options(options, query, "query"), read_npy(body, array_field)
    if kind != JSON and not kind.endswith("+json"):
        accepted = f"{JSON} or {NPY}" if array_field else JSON
        raise HTTPException(415, f"unsupported Content-Type {kind!r}: send {accepted}")
    data = parse_json(body)
    if not isinstance(data, dict):
        raise RequestValidationError([{"loc": ("body",), "msg": "expected a JSON object", "type": "model_attributes_type"}])
    both = sorted(set(query) & set(data))
    if both:
        raise RequestValidationError([{"loc": ("query", both[0]), "msg": f"{both[0]} is given in both the query and the body", "type": "value_error"}])
    array = None
    if array_field is not None:
        if array_field not in data:
            raise RequestValidationError([{"loc": ("body", array_field), "msg": "Field required", "type": "missing"}])
        value = data.pop(array_field)
        if array_field == "inputs" and isinstance(value, list) and value and isinstance(value[0], str):
            array = png_images_to_array(value, array_field)
        else:
            array = json_array(value, array_field, IMAGE_ROW_SHAPES if array_field == "inputs" else ())
    return validate_options(options, {**query, **data}, "body"), array


def parse_json(body: bytes):
    """orjson; what it refuses goes to the stdlib parser, which reads NaN and Infinity, so that the
    check of the field holding them names it (instead of a bare "invalid JSON")."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        position = getattr(exc, "pos", 0)
        raise RequestValidationError([{"loc": ("body", position), "msg": f"JSON decode error: {exc}", "type": "json_invalid"}]) from None


def request_doc(request_model: type[BaseModel], options: type[BaseModel] | None = None, npy: str | None = None) -> dict:
    """OpenAPI for a body read by ``read_request``: the JSON schema, and the NPY form with its query options."""
    content = {JSON: {"schema": request_model.model_json_schema()}}
    doc: dict = {"requestBody": {"required": True, "content": content}}
    if npy and options is not None:
        content[NPY] = {"schema": {"type": "string", "format": "binary", "description": npy}}
        properties = options.model_json_schema()["properties"]
        doc["parameters"] = [
            {"name": name, "in": "query", "required": False, "schema": properties[name],
             "description": f"(NPY bodies) {field.description or name}"}
            for name, field in options.model_fields.items()
        ]
    return doc


def array_responses(main: str, others: str) -> dict:
    """OpenAPI for the NPY / NPZ answers offered through ``Accept``."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {200: {"description": f"JSON; or with Accept: {NPY} the {main} array (X-Array names it), "
                                 f"with Accept: {NPZ} an .npz of {others}",
                  "content": {NPY: binary, NPZ: binary}}}
