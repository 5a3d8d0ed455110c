"""The Open Inference Protocol through the real tritonclient, against the live server."""

import json

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from service import noise

HEADER = "Inference-Header-Content-Length"


@pytest.fixture(scope="module")
def client(server):
    c = triton.InferenceServerClient(server.removeprefix("http://"), network_timeout=60)
    yield c
    c.close()


def tensor(name, array, binary):
    t = triton.InferInput(name, list(array.shape), "FP32")
    t.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32), binary_data=binary)
    return t


def outputs(names, binary):
    return [triton.InferRequestedOutput(n, binary_data=binary) for n in names]


def images(n, seed=0):
    return (np.random.default_rng(seed).random((n, 784)) < 0.3).astype(np.float32)


def test_server_and_model_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "vae-serve" and {"binary_tensor_data", "statistics"} <= set(meta["extensions"])
    decoder = client.get_model_metadata("fashion-mnist-decoder")
    assert decoder["inputs"] == [{"name": "z", "datatype": "FP32", "shape": [-1, 32]}]
    assert {o["name"] for o in decoder["outputs"]} == {"image", "logits"}
    score = client.get_model_metadata("fashion-mnist-score", model_version="1")
    assert {i["name"]: i["shape"] for i in score["inputs"]} == {"x": [-1, 784], "eps": [-1, -1, 32]}
    assert client.is_model_ready("fashion-mnist-encoder") and client.is_model_ready("fashion-mnist-2d-decoder")
    assert not client.is_model_ready("no-such-model")


@pytest.mark.parametrize("binary_in, binary_out", [(True, True), (False, False), (True, False), (False, True)])
def test_decoder_equals_rest_decode(client, server, binary_in, binary_out):
    z = np.random.default_rng(5).standard_normal((4, 32)).astype(np.float32)
    result = client.infer(
        "fashion-mnist-decoder", [tensor("z", z, binary_in)], outputs=outputs(["image"], binary_out), request_id="req-7"
    )
    assert result.get_response()["id"] == "req-7"
    rest = httpx.post(f"{server}/decode", json={"latents": z.tolist()}, timeout=60).json()
    np.testing.assert_array_equal(result.as_numpy("image").reshape(4, 28, 28), np.asarray(rest["images"], np.float32))
    assert result.as_numpy("logits") is None  # only what was asked for


def test_encoder_equals_rest_encode(client, server):
    x = images(3)
    result = client.infer("fashion-mnist-encoder", [tensor("x", x, True)])  # all outputs, as JSON
    rest = httpx.post(f"{server}/encode", json={"inputs": x.tolist()}, timeout=60).json()
    for name in ("mean", "log_var"):
        np.testing.assert_array_equal(result.as_numpy(name), np.asarray(rest[name], np.float32))


def test_score_with_the_rest_seeds_noise_equals_rest_elbo(client, server):
    x, samples, seed = images(5, seed=2), 8, 123
    eps = noise.draw([noise.Noise.of(seed, (samples, 5, 32), axis=1)])  # as /elbo draws it
    result = client.infer(
        "fashion-mnist-score",
        [tensor("x", x, True), tensor("eps", eps, False)],
        outputs=outputs(["elbo", "kl", "log_likelihood"], True),
    )
    rest = httpx.post(
        f"{server}/elbo", json={"inputs": x.tolist(), "samples": samples, "seed": seed}, timeout=60
    ).json()
    for name in ("elbo", "kl", "log_likelihood"):
        np.testing.assert_array_equal(result.as_numpy(name), np.asarray(rest[name], np.float32))


def test_statistics_count_the_inferences(client):
    before = client.get_inference_statistics("fashion-mnist-2d-decoder")["model_stats"][0]
    client.infer("fashion-mnist-2d-decoder", [tensor("z", np.zeros((3, 2)), True)])
    after = client.get_inference_statistics("fashion-mnist-2d-decoder")["model_stats"][0]
    assert after["inference_count"] == before["inference_count"] + 3
    assert after["execution_count"] == before["execution_count"] + 1
    success = after["inference_stats"]["success"]
    assert success["count"] == before["inference_stats"]["success"]["count"] + 1 and success["ns"] > 0
    everything = client.get_inference_statistics()["model_stats"]
    assert {"fashion-mnist-decoder", "fashion-mnist-score"} <= {s["name"] for s in everything}


def test_errors_reach_the_client_with_the_protocols_codes(client):
    with pytest.raises(
        InferenceServerException, match="shape \\[2, 31\\] does not match the model's \\[-1, 32\\]"
    ) as bad:
        client.infer("fashion-mnist-decoder", [tensor("z", np.zeros((2, 31)), True)])
    assert bad.value.status() == "400"
    with pytest.raises(InferenceServerException, match="unknown model") as missing:
        client.get_model_metadata("nope-decoder")
    assert missing.value.status() == "404"
    with pytest.raises(InferenceServerException, match="no version '9'"):
        client.infer("fashion-mnist-decoder", [tensor("z", np.zeros((1, 32)), True)], model_version="9")


def raw_infer(server, body: bytes, header_length=None, name="fashion-mnist-decoder"):
    headers = {} if header_length is None else {HEADER: str(header_length)}  # no Content-Type, as tritonclient
    return httpx.post(f"{server}/v2/models/{name}/infer", content=body, headers=headers, timeout=60)


def binary_request(z: np.ndarray, **extra) -> tuple[bytes, int]:
    head = json.dumps(
        {
            "inputs": [
                {
                    "name": "z",
                    "shape": list(z.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": z.nbytes},
                    **extra,
                }
            ]
        }
    ).encode()
    return head + z.astype("<f4").tobytes(), len(head)


def test_raw_binary_request_without_content_type_is_answered(server):
    z = np.zeros((2, 32), np.float32)
    body, length = binary_request(z)
    response = raw_infer(server, body, length)
    assert response.status_code == 200 and response.json()["outputs"][0]["shape"] == [2, 784]


@pytest.mark.parametrize(
    "case, expect",
    [
        ("header longer than body", "longer than the body"),
        ("header not a number", "non-negative integer"),
        ("short body", "bytes short"),
        ("trailing bytes", "after the last input"),
        ("data and binary", "both 'data' and binary_data_size"),
        ("wrong size", "needs 256 bytes"),
        ("not json", "not valid JSON"),
        ("wrong datatype", "datatype must be FP32"),
        ("missing input", "do not match the model's"),
        ("too few values", "values for shape"),
    ],
)
def test_malformed_framing_is_400_naming_the_problem(server, case, expect):
    z = np.zeros((2, 32), np.float32)
    body, length = binary_request(z)
    if case == "header longer than body":
        body, length = body, len(body) + 1
    elif case == "header not a number":
        length = "ten"
    elif case == "short body":
        body = body[:-8]
    elif case == "trailing bytes":
        body += b"\0" * 4
    elif case == "data and binary":
        body, length = binary_request(z, data=[0.0] * 64)
    elif case == "wrong size":
        head = json.dumps(
            {"inputs": [{"name": "z", "shape": [2, 32], "datatype": "FP32", "parameters": {"binary_data_size": 100}}]}
        ).encode()
        body, length = head + b"\0" * 100, len(head)
    elif case == "not json":
        body, length = b"{inputs: 1}", None
    elif case == "wrong datatype":
        body, length = (
            json.dumps({"inputs": [{"name": "z", "shape": [1, 32], "datatype": "INT64", "data": [0] * 32}]}).encode(),
            None,
        )
    elif case == "missing input":
        body, length = (
            json.dumps(
                {"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32", "data": [0.0] * 784}]}
            ).encode(),
            None,
        )
    elif case == "too few values":
        body, length = (
            json.dumps({"inputs": [{"name": "z", "shape": [2, 32], "datatype": "FP32", "data": [0.0] * 63}]}).encode(),
            None,
        )
    response = raw_infer(server, body, length)
    assert response.status_code == 400, response.text
    assert expect in response.json()["error"]


def test_timeout_parameter_and_limits(server):
    z = [0.0] * 32 * 257
    over = json.dumps({"inputs": [{"name": "z", "shape": [257, 32], "datatype": "FP32", "data": z}]}).encode()
    response = raw_infer(server, over)
    assert response.status_code == 400 and "limit of 256" in response.json()["error"]
    bad = json.dumps(
        {
            "parameters": {"timeout": -5},
            "inputs": [{"name": "z", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}],
        }
    )
    assert raw_infer(server, bad.encode()).status_code == 400
    ok = json.dumps(
        {
            "id": "t",
            "parameters": {"timeout": 30_000_000},
            "inputs": [{"name": "z", "shape": [1, 32], "datatype": "FP32", "data": [0.0] * 32}],
        }
    )
    answer = raw_infer(server, ok.encode())
    assert answer.status_code == 200 and answer.json()["id"] == "t"


def test_health_and_versions_routes(server):
    for path in (
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/fashion-mnist-decoder/ready",
        "/v2/models/fashion-mnist-decoder/versions/1/ready",
    ):
        assert httpx.get(server + path).status_code == 200, path
    assert httpx.get(server + "/v2/models/fashion-mnist-decoder/versions/1").json()["versions"] == ["1"]
    assert httpx.get(server + "/v2/models/fashion-mnist-decoder/versions/2").status_code == 404
