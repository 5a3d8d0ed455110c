"""The OIP codec and statistics without HTTP."""

import json

import numpy as np
import pytest

from service.errors import InvalidInput
from service.manifest import GraphSpec
from service.metrics import GraphStats
from service.oip_codec import infer_response, parse_infer_request

SCORE = GraphSpec(
    path="score.onnx",
    sha256="0" * 64,
    bytes=1,
    inputs={"x": [-1, 4], "eps": [-1, -1, 2]},
    outputs={"elbo": [-1], "kl": [-1]},
    batch_axes={"x": 0, "eps": 1, "elbo": 0, "kl": 0},
)


def request(inputs, binary=b"", **extra) -> tuple[bytes, str | None]:
    head = json.dumps({"inputs": inputs, **extra}).encode()
    return head + binary, (str(len(head)) if binary else None)


def test_json_and_binary_inputs_mix_in_listed_order():
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    eps = np.ones((2, 3, 2), np.float32)
    body, length = request(
        [
            {"name": "eps", "shape": [2, 3, 2], "datatype": "FP32", "parameters": {"binary_data_size": eps.nbytes}},
            {"name": "x", "shape": [3, 4], "datatype": "FP32", "data": x.tolist()},
        ],
        eps.tobytes(),
        id="r1",
        parameters={"timeout": 2_000_000},
    )
    parsed = parse_infer_request(body, length, SCORE)
    np.testing.assert_array_equal(parsed.inputs["x"], x)
    np.testing.assert_array_equal(parsed.inputs["eps"], eps)
    assert parsed.id == "r1" and parsed.timeout_s == 2.0 and parsed.outputs == ["elbo", "kl"] and not parsed.binary


def test_batch_sizes_must_agree_along_each_inputs_batch_axis():
    body, _ = request(
        [
            {"name": "x", "shape": [3, 4], "datatype": "FP32", "data": [0.0] * 12},
            {"name": "eps", "shape": [2, 5, 2], "datatype": "FP32", "data": [0.0] * 20},
        ]
    )
    with pytest.raises(InvalidInput, match=r"disagree on the batch size: \[3, 5\]"):
        parse_infer_request(body, None, SCORE)


def test_binary_outputs_frame_after_the_json_header():
    body, _ = request(
        [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4},
            {"name": "eps", "shape": [1, 1, 2], "datatype": "FP32", "data": [0.0] * 2},
        ],
        outputs=[{"name": "kl", "parameters": {"binary_data": True}}, {"name": "elbo"}],
    )
    parsed = parse_infer_request(body, None, SCORE)
    results = {"elbo": np.array([-1.5], np.float32), "kl": np.array([0.25], np.float32)}
    answer, headers = infer_response("m-score", "1", parsed, results)
    split = int(headers["inference-header-content-length"])
    head = json.loads(answer[:split])
    assert [o["name"] for o in head["outputs"]] == ["kl", "elbo"]  # the order asked for
    assert head["outputs"][0]["parameters"] == {"binary_data_size": 4} and head["outputs"][1]["data"] == [-1.5]
    np.testing.assert_array_equal(np.frombuffer(answer[split:], "<f4"), [0.25])


def test_binary_data_output_makes_every_output_binary():
    body, _ = request(
        [
            {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4},
            {"name": "eps", "shape": [1, 1, 2], "datatype": "FP32", "data": [0.0] * 2},
        ],
        parameters={"binary_data_output": True},
    )
    assert parse_infer_request(body, None, SCORE).binary == {"elbo", "kl"}


def test_unknown_outputs_and_zero_sized_shapes_are_refused():
    good = [
        {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [0.0] * 4},
        {"name": "eps", "shape": [1, 1, 2], "datatype": "FP32", "data": [0.0] * 2},
    ]
    with pytest.raises(InvalidInput, match="unknown outputs \\['z'\\]"):
        parse_infer_request(request(good, outputs=[{"name": "z"}])[0], None, SCORE)
    zero = [good[0], {"name": "eps", "shape": [0, 1, 2], "datatype": "FP32", "data": []}]
    with pytest.raises(InvalidInput, match="positive integers"):
        parse_infer_request(request(zero)[0], None, SCORE)


def test_stats_count_rows_runs_and_request_time():
    stats = GraphStats()
    stats.queue_wait(0.001)
    stats.queue_wait(0.003)
    stats.run_done(rows=5, compute_s=0.002, request_s=[0.004, 0.006], ok=True)
    stats.run_done(rows=1, compute_s=0.001, request_s=[0.002], ok=False)
    report = stats.report("m-decoder", "1")
    assert report["inference_count"] == 5 and report["execution_count"] == 2
    s = report["inference_stats"]
    assert s["success"] == {"count": 2, "ns": 10_000_000} and s["fail"] == {"count": 1, "ns": 2_000_000}
    assert s["queue"] == {"count": 2, "ns": 4_000_000} and s["compute_infer"]["count"] == 3
    assert [b["batch_size"] for b in report["batch_stats"]] == [1, 5]
