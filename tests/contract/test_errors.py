"""Client mistakes get a 4xx that names the field: never a 500."""

import json

import httpx
import pytest

GOOD = [[0.0] * 784]


def detail_text(response):
    return json.dumps(response.json()["detail"], ensure_ascii=False)


@pytest.mark.parametrize(
    "path, body, field, message",
    [
        ("/encode", {"inputs": [[0.5] * 783]}, "inputs", "expected 784 numbers or 28 rows of 28, got shape [783]"),
        ("/encode", {"inputs": [[[0.5] * 28] * 27]}, "inputs", "got shape [27, 28]"),
        ("/encode", {"inputs": [[[0.5] * 28] * 27 + [[0.5] * 27]]}, "inputs", "rows of unequal length"),
        ("/encode", {"inputs": [[1.5] * 784]}, "inputs", "outside [0, 1]"),
        ("/encode", {"inputs": [[-0.1] + [0.0] * 783]}, "inputs", "outside [0, 1]"),
        ("/encode", {"inputs": []}, "inputs", "at least 1"),
        ("/encode", {"inputs": [["a"] * 784]}, "inputs", "valid number"),
        ("/encode", {"inputs": GOOD, "samples": 501}, "samples", "over this server's limit of 500"),
        ("/encode", {"inputs": GOOD, "samples": -1}, "samples", "greater than or equal to 0"),
        ("/encode", {"inputs": GOOD * 257}, "inputs", "over this server's limit of 256"),
        ("/encode", {"inputs": GOOD, "colour": "red"}, "colour", "Extra inputs are not permitted"),
        ("/decode", {"latents": [[0.0] * 3]}, "latents", "expected 32 numbers (the model's latent_dim), got shape [3]"),
        ("/decode", {"latents": [[0.0] * 32], "format": "gif"}, "format", "'array' or 'png'"),
        ("/decode", {"latents": [[0.0] * 32] * 257}, "latents", "limit of 256"),
        ("/sample", {"n": 0}, "n", "greater than or equal to 1"),
        ("/sample", {"n": 257}, "n", "limit of 256"),
        ("/sample", {"n": 1, "temperature": 0}, "temperature", "greater than 0"),
        ("/sample", {"n": 1, "seed": -5}, "seed", "greater than or equal to 0"),
        ("/sample", {"n": "many"}, "n", "valid integer"),
        ("/elbo", {"inputs": GOOD, "samples": 0}, "samples", "greater than or equal to 1"),
        ("/elbo", {"inputs": GOOD, "samples": 501}, "samples", "limit of 500"),
        ("/elbo", {"inputs": [[0.5] * 10]}, "inputs", "expected 784 numbers"),
        (
            "/elbo",
            {"inputs": GOOD * 41, "samples": 500},
            "samples",
            "20500 samples × inputs is over this server's limit of 20000",
        ),
        ("/encode", {"inputs": GOOD * 41, "samples": 500}, "samples", "samples × inputs is over"),
    ],
)
def test_bad_requests_are_422_naming_the_field(client, path, body, field, message):
    response = client.post(path, json=body)
    assert response.status_code == 422, response.text
    text = detail_text(response)
    assert field in text and message in text, text


@pytest.mark.parametrize("path", ["/encode", "/elbo"])
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_non_finite_numbers_are_rejected(client, path, token):
    body = '{"inputs": [[' + ", ".join([token] + ["0.5"] * 783) + "]]}"
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "inputs" in detail_text(response)


@pytest.mark.parametrize(
    "body, field",
    [
        ('{"n": 1e400}', "n"),
        ('{"n": 1, "temperature": NaN}', "temperature"),
        ('{"n": 1, "temperature": Infinity}', "temperature"),
        ('{"n": 1, "seed": -1e999}', "seed"),
    ],
)
def test_non_finite_options_are_422_not_500(client, body, field):
    response = client.post("/sample", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_errors_do_not_echo_the_input_back(client):
    response = client.post("/encode", json={"inputs": [["x"] * 784]})
    assert response.status_code == 422
    assert len(response.content) < 2000 and all("input" not in e for e in response.json()["detail"])


def test_a_body_that_is_not_an_object_is_422(client):
    for body in (b"[]", b"", b'"n"'):
        assert client.post("/sample", content=body, headers={"content-type": "application/json"}).status_code == 422


def test_an_unsupported_content_type_is_415_naming_it(client):
    response = client.post("/sample", content=b"hello", headers={"content-type": "text/plain"})
    assert response.status_code == 415 and "text/plain" in response.json()["detail"]


def test_non_finite_latents_are_rejected(client):
    body = '{"latents": [[NaN' + ", 0.0" * 31 + "]]}"
    response = client.post("/decode", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "non-finite" in detail_text(response)


def test_malformed_json_is_422(client):
    response = client.post("/sample", content=b'{"n": 3,', headers={"content-type": "application/json"})
    assert response.status_code == 422 and "JSON" in detail_text(response)


def test_unknown_model_is_404(client):
    for path, body in (
        ("/sample", {"n": 1}),
        ("/encode", {"inputs": GOOD}),
        ("/decode", {"latents": [[0.0]]}),
        ("/elbo", {"inputs": GOOD}),
    ):
        response = client.post(path, json={**body, "model": "no-such-model"})
        assert response.status_code == 404 and "no-such-model" in response.json()["detail"]


def test_oversized_body_is_413(client):
    big = b'{"inputs": [' + b",".join([b"[" + b",".join([b"0.123456"] * 784) + b"]"] * 1000) + b"]}"
    assert len(big) > 4 * 1024 * 1024
    response = client.post("/encode", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and "too large" in response.json()["detail"]


def test_oversized_body_on_the_inference_protocol_is_413_in_its_shape(client):
    """An OIP client reads every error as {"error": ...}: the body limit's 413 too."""
    big = b"0" * (4 * 1024 * 1024 + 1)
    response = client.post("/v2/models/fashion-mnist-decoder/infer", content=big)
    assert response.status_code == 413 and set(response.json()) == {"error"}
    assert "too large" in response.json()["error"] and "VAE_MAX_BODY_BYTES" in response.json()["error"]


def test_oversized_chunked_body_is_413(server):
    """A body streamed in chunks, with no Content-Length: the limit holds while it arrives."""

    def chunks():
        yield b'{"inputs": ['
        for _ in range(1000):
            yield b"[" + b",".join([b"0.123456"] * 784) + b"],"
        yield b"[0]]}"

    headers = {"content-type": "application/json"}
    response = httpx.post(server + "/encode", content=chunks(), headers=headers, timeout=60)
    assert response.status_code == 413


def test_wrong_method_and_path(client):
    assert client.get("/sample").status_code == 405
    assert client.post("/nope", json={}).status_code == 404


DEEP = "[" * 5000 + "0" + "]" * 5000  # past orjson's depth limit and Python's recursion limit
REST_FIELDS = {
    "/sample": ["n", "seed", "temperature", "format", "model", "x"],
    "/encode": ["inputs", "samples", "seed", "model"],
    "/decode": ["latents", "format", "model"],
    "/elbo": ["inputs", "samples", "seed", "model"],
    "/anomaly": ["inputs", "samples", "seed", "threshold", "maps", "model"],
}
REST_BODIES = {"/sample": {"n": 1}, "/encode": {"inputs": [[0.0] * 784]}, "/decode": {"latents": [[0.0] * 32]},
               "/elbo": {"inputs": [[0.0] * 784]}, "/anomaly": {"inputs": [[0.0] * 784]}}  # fmt: skip


@pytest.mark.parametrize("path, field", [(p, f) for p, fields in REST_FIELDS.items() for f in fields])
def test_json_nested_thousands_deep_in_any_field_is_a_422(client, path, field):
    body = json.dumps({**REST_BODIES[path], field: "DEEP"}).replace('"DEEP"', DEEP)
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "nested too deeply" in detail_text(response)


OIP_INPUT = {"name": "z", "datatype": "FP32", "shape": [1, 32], "data": [0.0] * 32}
OIP_PLACES = {
    "inputs": lambda: {"inputs": "DEEP"},
    "data": lambda: {"inputs": [{**OIP_INPUT, "data": "DEEP"}]},
    "shape": lambda: {"inputs": [{**OIP_INPUT, "shape": "DEEP"}]},
    "name": lambda: {"inputs": [{**OIP_INPUT, "name": "DEEP"}]},
    "input parameters": lambda: {"inputs": [{**OIP_INPUT, "parameters": "DEEP"}]},
    "outputs": lambda: {"inputs": [OIP_INPUT], "outputs": "DEEP"},
    "parameters": lambda: {"inputs": [OIP_INPUT], "parameters": "DEEP"},
    "id": lambda: {"inputs": [OIP_INPUT], "id": "DEEP"},
}


@pytest.mark.parametrize("place", OIP_PLACES)
def test_oip_json_nested_thousands_deep_anywhere_is_a_400_on_a_live_server(server, place):
    body = json.dumps(OIP_PLACES[place]()).replace('"DEEP"', DEEP)
    response = httpx.post(f"{server}/v2/models/fashion-mnist-decoder/infer", content=body, timeout=30)
    assert response.status_code == 400 and "depth limit" in response.json()["error"]
