"""OpenAPI for the inference routes, which read their bodies themselves (``arrays.read_request``):
the JSON schema from the pydantic models, the NPY form with its query options, and NPY/NPZ answers."""

from __future__ import annotations

from pydantic import BaseModel

from ..arrays import JSON, NPY, NPZ


def request_doc(request_model: type[BaseModel], options: type[BaseModel] | None = None, npy: str | None = None) -> dict:
    content = {JSON: {"schema": request_model.model_json_schema()}}
    doc: dict = {"requestBody": {"required": True, "content": content}}
    if npy and options is not None:
        content[NPY] = {"schema": {"type": "string", "format": "binary", "description": npy}}
        properties = options.model_json_schema()["properties"]
        doc["parameters"] = [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": properties[name],
                "description": f"(NPY bodies) {field.description or name}",
            }
            for name, field in options.model_fields.items()
        ]
    return doc


def array_responses(main: str, others: str) -> dict:
    binary = {"schema": {"type": "string", "format": "binary"}}
    description = (
        f"JSON; or with Accept: {NPY} the {main} array (X-Array names it), with Accept: {NPZ} an .npz of {others}"
    )
    return {200: {"description": description, "content": {NPY: binary, NPZ: binary}}}
