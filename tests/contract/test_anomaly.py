"""POST /anomaly on the shipped model: the answer's shape, determinism, binary bodies, maps, errors."""

import io
import json
import shutil

import numpy as np
import pytest

from service.app import create_app
from service.settings import Settings

from .conftest import ROOT, InProcessClient


def fashion(n: int) -> np.ndarray:
    from training.data import read_idx

    return read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")[:n] / 255.0  # (n, 28, 28)


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, np.float32))
    return buffer.getvalue()


def test_the_answer_per_input(client):
    inputs = np.concatenate([fashion(20), np.random.default_rng(0).random((5, 28, 28))])
    answer = client.post("/anomaly", json={"inputs": inputs.tolist(), "seed": 3}).json()
    assert set(answer) == {"model", "score", "percentile", "outlier", "log_likelihood", "statistics"}  # no maps unasked
    assert answer["model"] == "fashion-mnist"
    assert set(answer["statistics"]) == {"log_likelihood", "kl", "gap", "complexity", "latent_distance"}
    assert all(len(answer[k]) == 25 for k in ("score", "percentile", "outlier", "log_likelihood"))
    assert all(0 <= p <= 100 for p in answer["percentile"])
    assert answer["outlier"] == [p >= 99 for p in answer["percentile"]]
    assert all(answer["outlier"][20:]) and sum(answer["outlier"][:20]) <= 2  # noise flagged, garments not
    order = np.argsort(answer["score"])
    assert list(np.asarray(answer["percentile"])[order]) == sorted(answer["percentile"])  # monotone in the score
    again = client.post("/anomaly", json={"inputs": inputs.tolist(), "seed": 3}).json()
    assert again["score"] == answer["score"]  # same seed, same answer
    strict = client.post("/anomaly", json={"inputs": inputs.tolist(), "seed": 3, "threshold": 50}).json()
    assert strict["outlier"] == [p >= 50 for p in answer["percentile"]]


def test_npy_in_npz_out_and_maps(client):
    images = fashion(4)
    response = client.post("/anomaly?seed=1&maps=true", content=npy(images),
                           headers={"content-type": "application/x-npy", "accept": "application/x-npz"})  # fmt: skip
    arrays = np.load(io.BytesIO(response.content))
    assert response.headers["x-model-version"] == "1"
    assert {"score", "percentile", "outlier", "maps", "statistic_kl", "statistic_latent_distance"} <= set(arrays.files)
    assert arrays["maps"].shape == (4, 28, 28) and arrays["maps"].min() >= 0
    as_json = client.post("/anomaly", json={"inputs": images.tolist(), "seed": 1, "maps": True}).json()
    np.testing.assert_allclose(arrays["score"], as_json["score"], rtol=1e-6)
    np.testing.assert_allclose(arrays["maps"], as_json["maps"], atol=1e-6)


BAD = [
    {"inputs": [[0.0] * 783]},
    {"inputs": [[0.0] * 784], "samples": 0},
    {"inputs": [[2.0] * 784]},
    {"inputs": [[0.0] * 784], "model": "no-such-model"},
    {"inputs": [[0.0] * 784], "samples": 600},
    {"inputs": []},
    {"inputs": [[0.0] * 784], "extra": 1},
]


@pytest.mark.parametrize("body", BAD, ids=lambda b: json.dumps(b)[:40])
def test_bad_inputs_get_the_same_4xx_as_elbo(client, body):
    anomaly, elbo = client.post("/anomaly", json=body), client.post("/elbo", json=body)
    assert 400 <= anomaly.status_code < 500 and anomaly.status_code == elbo.status_code
    assert anomaly.json()["detail"] == elbo.json()["detail"]


def test_a_model_without_calibration_answers_409_with_how_to_add_it(tmp_path):
    shutil.copytree(ROOT / "models" / "fashion-mnist-2d", tmp_path / "plain")
    manifest = json.loads((tmp_path / "plain" / "manifest.json").read_text())
    del manifest["anomaly"]
    (tmp_path / "plain" / "manifest.json").write_text(json.dumps(manifest))
    client = InProcessClient(create_app(Settings(model_dir=tmp_path, default_model="plain", warmup=False)))
    try:
        response = client.post("/anomaly", json={"inputs": [[0.0] * 784]})
        assert response.status_code == 409 and "python -m training reexport" in response.json()["detail"]
        assert client.get("/models/plain").json()["anomaly"] is None
        assert client.post("/elbo", json={"inputs": [[0.0] * 784]}).status_code == 200  # the rest serves
    finally:
        client.close()
