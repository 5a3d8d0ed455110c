"""Hostile input, generated: hypothesis on the request parsers and the live endpoints, and
schemathesis on the live server's OpenAPI. Whatever arrives, the answer is a 2xx or a 4xx that
says what is wrong, never a 5xx."""

import io
import json
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.arrays import images, json_array, png_images, read_npy
from service.errors import InvalidInput
from service.manifest import GraphSpec
from service.oip_codec import parse_infer_request

JSON_SCALARS = (
    st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.floats(allow_nan=False) | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=60,
)
FIELDS = ["model", "inputs", "latents", "n", "seed", "samples", "temperature", "format"]
BODIES = st.dictionaries(
    st.sampled_from(FIELDS) | st.text(max_size=8),
    JSON_VALUES | st.lists(st.lists(st.floats(-2, 2), min_size=1, max_size=40), max_size=3),
    max_size=5,
)
SCORE = GraphSpec(
    path="s.onnx",
    sha256="0" * 64,
    bytes=1,
    inputs={"x": [-1, 4], "eps": [-1, -1, 2]},
    outputs={"elbo": [-1]},
    batch_axes={"x": 0, "eps": 1, "elbo": 0},
)


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@settings(max_examples=300, deadline=None)
@given(
    st.binary(max_size=300)
    | st.builds(
        lambda a, cut, junk: npy(a)[:cut] + junk,
        st.sampled_from([np.zeros((2, 3), np.float32), np.ones(5, np.float64), np.arange(4)]),
        st.integers(0, 200),
        st.binary(max_size=20),
    )
)
def test_any_bytes_as_npy_give_an_array_or_a_422(body):
    try:
        array = read_npy(body, "inputs")
    except InvalidInput as exc:
        assert exc.status == 422 and "inputs" in exc.message
    else:
        assert array.dtype == np.float32


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES)
def test_any_json_as_an_array_or_pngs_gives_an_array_or_a_422(value):
    shape = (28, 28, 1)
    for parse in (
        lambda v: images(json_array(v, "inputs"), shape),
        lambda v: png_images(v if isinstance(v, list) else [v], shape),
    ):
        try:
            array = parse(value)
        except InvalidInput as exc:
            assert exc.status == 422
        else:
            assert array.dtype == np.float32


@settings(max_examples=300, deadline=None)
@given(JSON_VALUES, st.binary(max_size=64), st.none() | st.integers(-5, 400).map(str) | st.text(max_size=5))
def test_any_oip_request_parses_or_gives_a_400(head, tail, header_length):
    body = json.dumps(head).encode() + tail
    try:
        parse_infer_request(body, header_length, SCORE)
    except InvalidInput as exc:
        assert exc.oip_status == 400 and exc.message


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(
    path=st.sampled_from(["/sample", "/decode", "/encode", "/elbo"]),
    body=BODIES,
    query=st.dictionaries(st.sampled_from(FIELDS), st.text(max_size=6), max_size=2),
    content_type=st.sampled_from(["application/json", "application/x-npy", "text/plain", ""]),
)
def test_the_live_endpoints_answer_anything_with_2xx_or_a_4xx_that_names_it(server, path, body, query, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(server + path, params=query, content=json.dumps(body), headers=headers, timeout=60)
    assert response.status_code < 500, response.text
    if response.status_code >= 400:
        assert response.json()["detail"]


@pytest.mark.slow
def test_schemathesis_finds_no_server_error_and_no_schema_mismatch(server, tmp_path):
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{server}/openapi.json",
        "--checks",
        "not_a_server_error,response_schema_conformance",
        "--max-examples",
        "15",
        "--max-time",
        "60",
        "--generation-deterministic",
        "--request-timeout",
        "30",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "passed" in done.stdout
