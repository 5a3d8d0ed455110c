"""The Open Inference Protocol over gRPC, driven by the real ``tritonclient.grpc`` against a live
server with two worker processes; answers compared bit for bit with the HTTP protocol's."""

from __future__ import annotations

import shutil
import signal
import socket
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
import tritonclient.http as triton_http
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from .conftest import ROOT, start_server

KEY, ADMIN = "user-key", "admin-key"
AUTH = {"authorization": f"Bearer {KEY}"}
BODY_LIMIT = 4 * 1024 * 1024


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("grpc")
    shutil.copytree(ROOT / "models", root / "models")
    server, url = start_server(root / "models", root / "server.log", api_keys=KEY, admin_keys=ADMIN,
                               model_control="explicit", max_body_bytes=BODY_LIMIT, max_request_rows=256,
                               workers=2)  # fmt: skip
    yield server, url, f"127.0.0.1:{server.env['VAE_GRPC_PORT']}", root / "models"
    server.stop()


@pytest.fixture(scope="module")
def client(live):
    c = triton.InferenceServerClient(live[2])
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(live):
    with grpc.insecure_channel(live[2], options=[("grpc.max_send_message_length", -1)]) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel), channel


def tensor(name, array):
    t = triton.InferInput(name, list(array.shape), "FP32")
    t.set_data_from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return t


def status_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return raised.value.code(), raised.value.details()


def test_server_and_model_calls_as_triton_answers_them(client):
    assert client.is_server_live() and client.is_server_ready()
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "vae-serve" and "binary_tensor_data" in meta["extensions"]
    decoder = client.get_model_metadata("fashion-mnist-decoder", as_json=True)
    assert decoder["inputs"] == [{"name": "z", "datatype": "FP32", "shape": ["-1", "32"]}]
    assert client.is_model_ready("fashion-mnist-score") and not client.is_model_ready("no-such-model")
    config = client.get_model_config("fashion-mnist-score", as_json=True)["config"]
    assert {i["name"]: i["dims"] for i in config["input"]} == {"x": ["-1", "784"], "eps": ["-1", "-1", "32"]}


def test_infer_equals_the_http_protocols_answer_bit_for_bit(client, live):
    x = (np.random.default_rng(0).random((5, 784)) < 0.3).astype(np.float32)
    eps = np.random.default_rng(1).standard_normal((8, 5, 32), dtype=np.float32)
    names = ["elbo", "kl", "log_likelihood"]
    result = client.infer("fashion-mnist-score", [tensor("x", x), tensor("eps", eps)], headers=AUTH, request_id="r-1",
                          outputs=[triton.InferRequestedOutput(n) for n in names])  # fmt: skip
    over_http = triton_http.InferenceServerClient(live[1].removeprefix("http://"))
    inputs = []
    for name, array in (("x", x), ("eps", eps)):
        t = triton_http.InferInput(name, list(array.shape), "FP32")
        t.set_data_from_numpy(array, binary_data=True)
        inputs.append(t)
    wanted = [triton_http.InferRequestedOutput(n, binary_data=True) for n in names]
    expected = over_http.infer("fashion-mnist-score", inputs, headers=dict(AUTH), outputs=wanted)  # it adds to them
    for name in names:
        assert result.as_numpy(name).tobytes() == expected.as_numpy(name).tobytes()
    assert result.get_response().id == "r-1" and result.get_response().model_version == "1"
    decoded = client.infer("fashion-mnist-decoder", [tensor("z", np.zeros((3, 32)))], headers={"x-api-key": KEY})
    assert decoded.as_numpy("image").shape == (3, 784) and decoded.as_numpy("logits").shape == (3, 784)


def test_api_keys_deadlines_and_limits_are_the_same_rules_as_http(client, stub):
    z = tensor("z", np.zeros((1, 32)))
    for headers in (None, {"authorization": "Bearer wrong"}):
        with pytest.raises(InferenceServerException) as raised:
            client.infer("fashion-mnist-decoder", [z], headers=headers)
        assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as raised:
        client.infer("no-such-model", [z], headers=AUTH)
    assert raised.value.status() == "StatusCode.NOT_FOUND" and "unknown model" in raised.value.message()
    too_many = tensor("z", np.zeros((257, 32)))
    with pytest.raises(InferenceServerException) as raised:
        client.infer("fashion-mnist-decoder", [too_many], headers=AUTH)
    assert raised.value.status() == "StatusCode.INVALID_ARGUMENT" and "limit of 256" in raised.value.message()
    call, _ = stub
    capped = raw_request()
    capped.parameters["timeout"].int64_param = 10**12  # µs, as Triton reads it: over the server's cap
    code, details = status_of(lambda: call.ModelInfer(capped, metadata=tuple(AUTH.items()), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "over this server's cap" in details


def raw_request(datatype="FP32", shape=(1, 32), raw=None) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name="fashion-mnist-decoder")
    request.inputs.add(name="z", datatype=datatype, shape=list(shape))
    request.raw_input_contents.append(np.zeros(shape, np.float32).tobytes() if raw is None else raw)
    return request


@pytest.mark.parametrize(
    "request_, fragment",
    [
        (raw_request(datatype="INT32"), "datatype must be FP32"),
        (raw_request(shape=(1, 31), raw=b"\0" * 124), "does not match the model's"),
        (raw_request(shape=(2**59, 32), raw=b""), "values, over"),  # 2**64 values: 0 in int64
        (raw_request(shape=(2**40, 32), raw=b""), "values, over"),
        (raw_request(raw=b"\0" * 100), "binary_data_size 100"),
        (raw_request(shape=(1, -32), raw=b""), "positive integers"),
    ],
)
def test_hostile_messages_are_invalid_argument_naming_the_field(stub, request_, fragment):
    call, _ = stub
    code, details = status_of(lambda: call.ModelInfer(request_, metadata=tuple(AUTH.items()), timeout=30))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and fragment in details


def test_a_message_past_the_body_limit_is_refused_whole(stub):
    call, _ = stub
    huge = raw_request(shape=(BODY_LIMIT // 128 + 1, 32))
    code, _ = status_of(lambda: call.ModelInfer(huge, metadata=tuple(AUTH.items()), timeout=30))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_statistics_and_the_repository_with_admin_keys(client, live):
    before = client.get_inference_statistics("fashion-mnist-2d-decoder", headers=AUTH, as_json=True)
    for _ in range(4):  # on new connections: either worker may serve them
        one = triton.InferenceServerClient(live[2])
        one.infer("fashion-mnist-2d-decoder", [tensor("z", np.zeros((3, 2)))], headers=AUTH)
        one.close()
    after = client.get_inference_statistics("fashion-mnist-2d-decoder", headers=AUTH, as_json=True)
    count = lambda s: int(s["model_stats"][0].get("inference_count", 0))  # noqa: E731
    assert count(after) == count(before) + 12
    with pytest.raises(InferenceServerException) as raised:
        client.get_model_repository_index(headers=AUTH)
    assert raised.value.status() == "StatusCode.UNAUTHENTICATED"
    admin = {"authorization": f"Bearer {ADMIN}"}
    index = client.get_model_repository_index(headers=admin, as_json=True)["models"]
    assert {m["name"] for m in index} >= {"fashion-mnist", "fashion-mnist-2d"}
    client.unload_model("fashion-mnist-gaussian", headers=admin)
    assert not client.is_model_ready("fashion-mnist-gaussian-decoder")
    client.load_model("fashion-mnist-gaussian", headers=admin)
    assert client.is_model_ready("fashion-mnist-gaussian-decoder")
    with pytest.raises(InferenceServerException) as raised:
        client.load_model("no-such-folder", headers=admin)
    assert raised.value.status() == "StatusCode.NOT_FOUND"


def test_health_and_reflection(stub):
    _, channel = stub
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "inference.GRPCInferenceService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    assert status_of(lambda: health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=10))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
    answers = reflect.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10)
    names = {s.name for a in answers for s in a.list_services_response.service}
    assert {"inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


@pytest.mark.slow
def test_sigterm_answers_the_calls_in_flight_and_refuses_new_ones(tmp_path):
    server, _ = start_server(ROOT / "models", tmp_path / "server.log", workers=2, max_concurrent_runs=1)
    target = f"127.0.0.1:{server.env['VAE_GRPC_PORT']}"
    try:
        with grpc.insecure_channel(target) as channel:
            call, health = service_pb2_grpc.GRPCInferenceServiceStub(channel), health_pb2_grpc.HealthStub(channel)
            heavy = service_pb2.ModelInferRequest(model_name="fashion-mnist-score")
            x, eps = np.zeros((64, 784), np.float32), np.zeros((500, 64, 32), np.float32)  # 32,000 score rows
            heavy.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
            heavy.inputs.add(name="eps", datatype="FP32", shape=list(eps.shape))
            heavy.raw_input_contents.extend([x.tobytes(), eps.tobytes()])
            in_flight = call.ModelInfer.future(heavy, timeout=60)
            watch = health.Watch(health_pb2.HealthCheckRequest(), timeout=30)
            assert next(watch).status == health_pb2.HealthCheckResponse.SERVING
            time.sleep(0.5)
            server.signal(signal.SIGTERM)
            # the watcher hears NOT_SERVING and its stream ends: it does not hold the stopping server
            assert [m.status for m in watch] == [health_pb2.HealthCheckResponse.NOT_SERVING]
            check = health.Check(health_pb2.HealthCheckRequest(), timeout=10)
            assert check.status == health_pb2.HealthCheckResponse.NOT_SERVING
            code, details = status_of(lambda: call.ModelInfer(raw_request(), timeout=10))
            assert code == grpc.StatusCode.UNAVAILABLE and "shutting down" in details
            answer = in_flight.result()  # accepted before SIGTERM: answered
            assert [o.name for o in answer.outputs][:1] == ["elbo"] and len(answer.raw_output_contents[0]) == 64 * 4
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()


@pytest.mark.slow
def test_the_grpc_deadline_is_the_requests_deadline(stub, client):
    """Behind a long call, a call whose gRPC deadline it cannot meet is shed at once (UNAVAILABLE,
    saying when to retry), as an HTTP request with that X-Timeout-Ms is."""
    call, _ = stub
    heavy = service_pb2.ModelInferRequest(model_name="fashion-mnist-score")
    x, eps = np.zeros((64, 784), np.float32), np.zeros((300, 64, 32), np.float32)  # 19,200 score rows
    heavy.inputs.add(name="x", datatype="FP32", shape=list(x.shape))
    heavy.inputs.add(name="eps", datatype="FP32", shape=list(eps.shape))
    heavy.raw_input_contents.extend([x.tobytes(), eps.tobytes()])
    ahead = [call.ModelInfer.future(heavy, metadata=tuple(AUTH.items()), timeout=120) for _ in range(2)]
    time.sleep(0.3)
    light = service_pb2.ModelInferRequest(model_name="fashion-mnist-score")
    light.inputs.add(name="x", datatype="FP32", shape=[1, 784])
    light.inputs.add(name="eps", datatype="FP32", shape=[8, 1, 32])
    light.raw_input_contents.extend(
        [np.zeros((1, 784), np.float32).tobytes(), np.zeros((8, 1, 32), np.float32).tobytes()]
    )
    code, details = status_of(lambda: call.ModelInfer(light, metadata=tuple(AUTH.items()), timeout=0.05))
    assert code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), details
    if code == grpc.StatusCode.UNAVAILABLE:
        assert "after its deadline" in details and "retry in" in details
    assert all(len(f.result().raw_output_contents) == 5 for f in ahead)


def test_a_grpc_port_in_use_stops_the_start_with_the_setting_named(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        with pytest.raises(RuntimeError, match=f"cannot serve gRPC on 127.0.0.1:{port}.*VAE_GRPC_PORT"):
            start_server(ROOT / "models", tmp_path / "server.log", workers=1, grpc_port=port)
