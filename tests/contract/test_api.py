"""The HTTP contract, through httpx against a live uvicorn serving the shipped models."""

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

SHIPPED = ("fashion-mnist", "fashion-mnist-gaussian", "fashion-mnist-2d")


def images(n, seed=0, binary=True):
    rng = np.random.default_rng(seed)
    x = rng.random((n, 784))
    return (x < 0.3).astype(float).tolist() if binary else x.round(4).tolist()


def test_health(client):
    assert client.get("/health/live").json() == {"status": "live"}
    ready = client.get("/health/ready")
    assert ready.status_code == 200 and set(SHIPPED) <= set(ready.json()["models"])


def test_models_describe_the_shipped_models(client, models):
    body = client.get("/models").json()
    assert body["default"] == "fashion-mnist"
    assert set(SHIPPED) <= set(models)
    for name in SHIPPED:
        m = models[name]
        assert m["status"] == "available" and m["provider"] == "CPUExecutionProvider"
        assert m["image_shape"] == [28, 28, 1] and m["likelihood"] in ("bernoulli", "gaussian")
        assert m["metrics"]["test_nll"] > 0 or m["likelihood"] == "gaussian"
        assert "test_log_likelihood" in m["metrics"] and "active_units" in m["metrics"]
    assert models["fashion-mnist-2d"]["latent_dim"] == 2
    assert (
        models["fashion-mnist-gaussian"]["likelihood"] == "gaussian" and models["fashion-mnist-gaussian"]["sigma"] > 0
    )
    one = client.get("/models/fashion-mnist")
    assert one.status_code == 200 and one.json()["name"] == "fashion-mnist" and one.json()["default"] is True
    missing = client.get("/models/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]


@pytest.mark.parametrize("name", SHIPPED)
def test_encode_shapes_and_image_forms(client, models, name):
    z_dim = models[name]["latent_dim"]
    flat = images(3)
    nested = [np.asarray(img).reshape(28, 28).tolist() for img in flat]
    a = client.post("/encode", json={"model": name, "inputs": flat}).json()
    b = client.post("/encode", json={"model": name, "inputs": nested}).json()
    assert a["model"] == name and "z" not in a
    assert np.asarray(a["mean"]).shape == (3, z_dim) and np.asarray(a["log_var"]).shape == (3, z_dim)
    assert a["mean"] == b["mean"] and a["log_var"] == b["log_var"]


def test_encode_samples_come_from_the_posterior(client):
    x = images(2)
    body = client.post("/encode", json={"inputs": x, "samples": 400, "seed": 3}).json()
    z = np.asarray(body["z"])  # (inputs, samples, Z)
    mean, std = np.asarray(body["mean"]), np.exp(0.5 * np.asarray(body["log_var"]))
    assert z.shape == (2, 400, mean.shape[1])
    assert np.all(np.abs(z.mean(1) - mean) < 5 * std / np.sqrt(400))
    assert np.allclose(z.std(1) / std, 1, atol=0.2)
    again = client.post("/encode", json={"inputs": x, "samples": 400, "seed": 3}).json()
    assert again["z"] == body["z"]


@pytest.mark.parametrize("name", SHIPPED)
def test_decode_arrays_and_pngs(client, models, name):
    z = np.random.default_rng(0).standard_normal((3, models[name]["latent_dim"])).tolist()
    arrays = client.post("/decode", json={"model": name, "latents": z}).json()
    imgs = np.asarray(arrays["images"])
    assert imgs.shape == (3, 28, 28) and imgs.min() >= 0 and imgs.max() <= 1
    pngs = client.post("/decode", json={"model": name, "latents": z, "format": "png"}).json()["images"]
    assert len(pngs) == 3
    for png, img in zip(pngs, imgs):
        decoded = Image.open(io.BytesIO(base64.b64decode(png)))
        assert decoded.size == (28, 28) and decoded.mode == "L"
        assert np.abs(np.asarray(decoded) / 255.0 - img).max() <= 0.5 / 255 + 1e-6


def test_sample_is_reproducible_by_seed(client):
    first = client.post("/sample", json={"n": 5, "seed": 123})
    second = client.post("/sample", json={"n": 5, "seed": 123})
    assert first.content == second.content  # bit-identical
    body = first.json()
    assert body["seed"] == 123 and np.asarray(body["images"]).shape == (5, 28, 28)
    other = client.post("/sample", json={"n": 5, "seed": 124}).json()
    assert other["latents"] != body["latents"]


def test_sample_without_seed_returns_the_seed_it_used(client):
    body = client.post("/sample", json={"n": 2}).json()
    replay = client.post("/sample", json={"n": 2, "seed": body["seed"]}).json()
    assert replay["latents"] == body["latents"] and replay["images"] == body["images"]


def test_temperature_scales_the_prior(client):
    cold = client.post("/sample", json={"n": 3, "seed": 9, "temperature": 0.5}).json()
    warm = client.post("/sample", json={"n": 3, "seed": 9, "temperature": 1.0}).json()
    np.testing.assert_allclose(np.asarray(cold["latents"]) * 2, np.asarray(warm["latents"]), rtol=1e-6)


def test_sample_png_and_other_models(client, models):
    body = client.post("/sample", json={"model": "fashion-mnist-2d", "n": 2, "seed": 1, "format": "png"}).json()
    assert body["model"] == "fashion-mnist-2d" and np.asarray(body["latents"]).shape == (2, 2)
    assert Image.open(io.BytesIO(base64.b64decode(body["images"][0]))).size == (28, 28)


def test_elbo_terms_and_their_relations(client):
    x = images(4, seed=5)
    one = client.post("/elbo", json={"inputs": x, "samples": 1, "seed": 0}).json()
    assert one["log_likelihood"] == one["elbo"] and one["gap"] == [0.0] * 4
    many = client.post("/elbo", json={"inputs": x, "samples": 200, "seed": 0}).json()
    for key in ("elbo", "reconstruction", "kl", "log_likelihood", "gap"):
        assert len(many[key]) == 4
    elbo, rec, kl, ll, gap = (np.asarray(many[k]) for k in ("elbo", "reconstruction", "kl", "log_likelihood", "gap"))
    np.testing.assert_allclose(elbo, rec - kl, rtol=1e-5)
    np.testing.assert_allclose(gap, ll - elbo, rtol=1e-5, atol=1e-4)
    assert np.all(gap >= 0) and np.all(kl >= 0) and np.all(ll < 0)
    np.testing.assert_allclose(kl, np.asarray(one["kl"]), rtol=1e-6)  # closed form: independent of ε


def test_elbo_kl_equals_the_closed_form_from_encode(client):
    x = images(6, seed=8)
    enc = client.post("/encode", json={"inputs": x}).json()
    mean, log_var = np.asarray(enc["mean"]), np.asarray(enc["log_var"])
    closed = 0.5 * (np.exp(log_var) + mean**2 - 1 - log_var).sum(1)
    kl = np.asarray(client.post("/elbo", json={"inputs": x, "samples": 3, "seed": 1}).json()["kl"])
    np.testing.assert_allclose(kl, closed, atol=1e-4, rtol=1e-5)


def test_elbo_scores_real_looking_images_above_noise(client):
    """An anomaly score: the decoder's own samples are far likelier than random pixels."""
    sample = client.post("/sample", json={"n": 4, "seed": 2}).json()
    binarized = (np.asarray(sample["images"]).reshape(4, 784) > 0.5).astype(float).tolist()
    typical = np.asarray(
        client.post("/elbo", json={"inputs": binarized, "samples": 50, "seed": 0}).json()["log_likelihood"]
    )
    noise = np.asarray(
        client.post("/elbo", json={"inputs": images(4, seed=1, binary=True), "samples": 50, "seed": 0}).json()[
            "log_likelihood"
        ]
    )
    assert typical.min() > noise.max() + 100


def test_concurrent_requests_get_their_own_results(server):
    """Batched with each other, every request still gets its own answer (to float32 rounding)."""
    import asyncio

    async def main():
        async with httpx.AsyncClient(base_url=server, timeout=60) as ac:
            together = await asyncio.gather(*(ac.post("/sample", json={"n": 1 + i % 4, "seed": i}) for i in range(48)))
            alone = [await ac.post("/sample", json={"n": 1 + i % 4, "seed": i}) for i in range(48)]
            return together, alone

    together, alone = asyncio.run(main())
    for t, a in zip(together, alone):
        assert t.status_code == a.status_code == 200
        tb, ab = t.json(), a.json()
        assert tb["seed"] == ab["seed"] and tb["latents"] == ab["latents"]
        np.testing.assert_allclose(tb["images"], ab["images"], atol=1e-6)


def test_metrics_are_prometheus_text(client):
    client.post("/sample", json={"n": 1, "seed": 0})
    client.post("/sample", json={"n": 1, "model": "nope"})
    text = client.get("/metrics").text
    assert 'vae_requests_total{endpoint="/sample",status="200"}' in text
    assert 'vae_requests_total{endpoint="/sample",status="404"}' in text
    assert 'vae_request_seconds_bucket{endpoint="/sample"' in text
    assert 'vae_batch_rows_bucket{graph="decoder",le="1.0",model="fashion-mnist"}' in text
    assert 'vae_queue_rows{graph="decoder",model="fashion-mnist"}' in text
    assert 'vae_queue_wait_seconds_count{graph="decoder",model="fashion-mnist"}' in text


def test_openapi_documents_every_endpoint_with_an_example(client):
    assert client.get("/docs").status_code == 200
    spec = client.get("/openapi.json").json()
    for path, title in (
        ("/encode", "EncodeRequest"),
        ("/decode", "DecodeRequest"),
        ("/sample", "SampleRequest"),
        ("/elbo", "ElboRequest"),
    ):
        operation = spec["paths"][path]["post"]
        body = operation["requestBody"]["content"]
        assert body["application/json"]["schema"]["title"] == title and body["application/json"]["schema"]["examples"]
        assert {"application/x-npy", "application/x-npz"} <= set(operation["responses"]["200"]["content"])
        if path != "/sample":  # the array endpoints also take NPY, with their options in the query
            assert "application/x-npy" in body
            assert {"model", "seed"} & {p["name"] for p in operation["parameters"] if p["in"] == "query"}
    for path in ("/models", "/models/{name}", "/health/live", "/health/ready", "/metrics"):
        assert "get" in spec["paths"][path]


def test_report_figures_are_served_and_nothing_else(client, models):
    assert {"latent_map.png", "latent_map.json", "samples.png"} <= set(models["fashion-mnist"]["report"])
    assert "manifold.png" in models["fashion-mnist-2d"]["report"]
    figure = client.get("/models/fashion-mnist/report/samples.png")
    assert (
        figure.status_code == 200 and figure.headers["content-type"] == "image/png" and figure.content[:4] == b"\x89PNG"
    )
    geometry = client.get("/models/fashion-mnist-2d/report/latent_map.json").json()
    assert geometry["components"] == [[1.0, 0.0], [0.0, 1.0]]
    for path in (
        "/models/fashion-mnist/report/..%2Fmanifest.json",
        "/models/fashion-mnist/report/nope.png",
        "/models/nope/report/samples.png",
        "/models/fashion-mnist/report/%2E%2E",
    ):
        assert client.get(path).status_code == 404, path


def test_the_playground_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("/static/app.js", "/static/style.css"):
        assert asset in page.text and client.get(asset).status_code == 200


def test_a_failing_observer_leaves_the_answer_200(client, monkeypatch, caplog):
    """Metrics, statistics and traces report on a request; an exception in one never becomes its answer."""
    from service.metrics import GraphStats, _Observer

    def broken(self, *args):
        raise RuntimeError("observer broken")

    monkeypatch.setattr(_Observer, "batch", broken)
    monkeypatch.setattr(GraphStats, "run_done", broken)
    for body in ({"n": 2, "seed": 1}, {"n": 3}):
        response = client.post("/sample", json=body)
        assert response.status_code == 200 and len(response.json()["images"]) == body["n"]
    assert any("observer _Observer failed in batch" in r.getMessage() for r in caplog.records)
