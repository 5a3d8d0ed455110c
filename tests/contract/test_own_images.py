"""From your own images to a served model: `fit images --data PATH --name NAME`, then every endpoint.

Tiny models train in seconds on data this test makes: a folder of 16×16 RGB PNGs in class
subfolders (mixed modes), an 8×8 grayscale .npy, a 10×6 array (an MLP: not a multiple of 4),
and a folder with a truncated file (the run stops and names it).
"""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

from service.app import create_app
from service.settings import Settings
from tests.training.test_images import write_folder
from training.__main__ import main as train_cli

from .conftest import InProcessClient

pytestmark = pytest.mark.slow  # trains three small models first (a module fixture)

FAST = ["--epochs", "2", "--no-progress", "--set", "eval.iwae_samples=4", "--set", "model.latent_dim=4",
        "--set", "model.hidden=[8, 16]", "--set", "model.dense=32", "--set", "train.batch_size=32"]  # fmt: skip


def fit(tmp, data, name, *extra) -> int:
    argv = ["fit", "images", "--data", str(data), "--name", name, "--runs-dir", str(tmp / "runs")]
    try:
        return train_cli([*argv, "--models-dir", str(tmp / "models"), *FAST, *extra])
    except SystemExit as exc:
        return exc.code


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("own")
    write_folder(tmp / "photos", size=(16, 16), per_class=40)
    rng = np.random.default_rng(0)
    np.save(tmp / "small.npy", rng.integers(0, 256, (240, 8, 8), dtype=np.uint8))
    np.save(tmp / "odd.npy", rng.random((240, 10, 6)).astype(np.float32))
    assert fit(tmp, tmp / "photos", "own-rgb") == 0
    assert fit(tmp, tmp / "small.npy", "own-8x8", "--set", "model.likelihood='bernoulli'") == 0
    assert fit(tmp, tmp / "odd.npy", "own-odd") == 0
    np.save(tmp / "squares.npy", squares(400, seed=1))
    assert fit(tmp, tmp / "squares.npy", "own-squares", "--epochs", "8") == 0
    return tmp


def squares(n: int, seed: int) -> np.ndarray:
    """Structured images: a coloured square at a random place on a dark, slightly noisy background."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 30, (n, 16, 16, 3), dtype=np.uint8)
    for image in images:
        y, x = rng.integers(0, 10, 2)
        image[y : y + 6, x : x + 6] = rng.integers(120, 256, 3)
    return images


@pytest.fixture(scope="module")
def client(trained):
    c = InProcessClient(create_app(Settings(model_dir=trained / "models", default_model="own-rgb", warmup=False)))
    yield c
    c.close()


def npy(array) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array, np.float32))
    return buffer.getvalue()


def test_the_manifests_carry_the_image_shape_and_the_architecture_follows_it(client):
    models = {m["name"]: m for m in client.get("/models").json()["models"]}
    assert {n: m["image_shape"] for n, m in models.items()} == {
        "own-rgb": [16, 16, 3], "own-8x8": [8, 8, 1], "own-odd": [10, 6, 1], "own-squares": [16, 16, 3]}  # fmt: skip
    architectures = {"own-rgb": "conv", "own-8x8": "conv", "own-odd": "mlp", "own-squares": "conv"}
    assert {n: m["architecture"] for n, m in models.items()} == architectures
    rgb = models["own-rgb"]
    assert rgb["dataset"]["name"] == "images" and rgb["metrics"]["test_bits_per_dim"] > 0
    assert {"latent_map.png", "samples.png", "reconstructions.png"} <= set(rgb["report"])


@pytest.mark.parametrize("name, shape", [("own-rgb", (16, 16, 3)), ("own-8x8", (8, 8)), ("own-odd", (10, 6))])
def test_every_endpoint_works_at_the_models_shape(client, name, shape):
    sample = client.post("/sample", json={"model": name, "n": 3, "seed": 4}).json()
    images = np.asarray(sample["images"])
    assert images.shape == (3, *shape) and images.min() >= 0 and images.max() <= 1
    flat = images.reshape(3, -1)
    encoded = client.post("/encode", json={"model": name, "inputs": images.tolist(), "samples": 2}).json()
    assert np.asarray(encoded["z"]).shape == (3, 2, 4)
    same = client.post("/encode", json={"model": name, "inputs": flat.tolist()}).json()  # flat H·W·C numbers too
    np.testing.assert_allclose(same["mean"], encoded["mean"], rtol=1e-6)
    decoded = client.post("/decode", json={"model": name, "latents": encoded["mean"]}).json()
    assert np.asarray(decoded["images"]).shape == (3, *shape)
    scores = client.post("/elbo", json={"model": name, "inputs": (flat > 0.5).astype(float).tolist(), "samples": 5})
    assert scores.status_code == 200 and len(scores.json()["gap"]) == 3


def test_npy_bodies_in_every_layout(client):
    images = np.asarray(client.post("/sample", json={"n": 2, "seed": 1}).json()["images"])  # (2, 16, 16, 3)
    answers = []
    for array in (images, images.reshape(2, -1)):
        headers = {"content-type": "application/x-npy", "accept": "application/x-npy"}
        response = client.post("/elbo?samples=3&seed=0", content=npy(array), headers=headers)
        assert response.status_code == 200
        answers.append(np.load(io.BytesIO(response.content)))
    np.testing.assert_array_equal(*answers)
    sample = client.post("/sample", json={"n": 2, "seed": 1}, headers={"accept": "application/x-npz"})
    assert np.load(io.BytesIO(sample.content))["images"].shape == (2, 16, 16, 3)


def test_png_answers_and_inputs_in_any_mode(client):
    rgb_png = client.post("/sample", json={"n": 1, "seed": 2, "format": "png"}).json()["images"][0]
    assert Image.open(io.BytesIO(base64.b64decode(rgb_png))).mode == "RGB"
    gray_png = client.post("/sample", json={"model": "own-8x8", "n": 1, "format": "png"}).json()["images"][0]
    assert Image.open(io.BytesIO(base64.b64decode(gray_png))).mode == "L"
    for mode in ("RGBA", "P", "L", "LA"):  # converted to the model's three channels
        buffer = io.BytesIO()
        Image.fromarray(np.random.default_rng(3).integers(0, 256, (16, 16, 3), dtype=np.uint8)).convert(mode).save(
            buffer, format="PNG"
        )
        encoded = base64.b64encode(buffer.getvalue()).decode()
        assert client.post("/elbo", json={"inputs": [encoded]}).status_code == 200, mode


def test_a_wrong_size_names_the_expected_shape(client):
    response = client.post("/elbo", json={"inputs": np.zeros((1, 28, 28)).tolist()})
    assert response.status_code == 422
    assert "expected 768 numbers or 16×16×3 nested lists, got shape [28, 28]" in response.json()["detail"][0]["msg"]
    buffer = io.BytesIO()
    Image.new("RGB", (28, 28)).save(buffer, format="PNG")
    png = client.post("/elbo", json={"inputs": [base64.b64encode(buffer.getvalue()).decode()]})
    assert png.status_code == 422 and "PNG is 28×28; expected 16×16" in png.json()["detail"][0]["msg"]


def test_the_open_inference_protocol_follows_the_manifest(client):
    meta = client.get("/v2/models/own-rgb-encoder").json()
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 768]}]
    z = np.zeros((2, 4), np.float32)
    request = {"inputs": [{"name": "z", "datatype": "FP32", "shape": [2, 4], "data": z.ravel().tolist()}]}
    infer = client.post("/v2/models/own-8x8-decoder/infer", json=request)
    image = next(o for o in infer.json()["outputs"] if o["name"] == "image")
    assert image["shape"] == [2, 64]


def test_an_unreadable_file_stops_the_run_before_training_and_names_it(trained, capsys):
    write_folder(trained / "broken", size=(8, 8), per_class=5, classes=("a",))
    good = (trained / "broken" / "a" / "001.png").read_bytes()
    (trained / "broken" / "a" / "cut.png").write_bytes(good[:40])
    assert fit(trained, trained / "broken", "never") == 2
    assert "cut.png: cannot read this image" in capsys.readouterr().err
    assert not (trained / "runs" / "never" / "last.pt").exists() and not (trained / "models" / "never").exists()


# Colour read back from an <img> through a canvas: the mean spread between R, G and B.
COLOUR = """(img) => {
  const c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  const ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  const d = ctx.getImageData(0, 0, c.width, c.height).data;
  let spread = 0;
  for (let i = 0; i < d.length; i += 4) {
    spread += Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]);
  }
  return {w: img.naturalWidth, h: img.naturalHeight, spread: spread / (d.length / 4)};
}"""


@pytest.mark.browser
def test_the_playground_follows_each_models_size_and_colour(trained, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    from .conftest import start_server
    from .test_playground import ARTIFACTS, CHROMIUM, FLAGS

    server, url = start_server(trained / "models", tmp_path / "server.log", default_model="own-rgb")
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1250})
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(url + "/")
            expect(page.locator("#sample-grid img")).to_have_count(16, timeout=20_000)
            page.wait_for_function("() => [...document.querySelectorAll('#sample-grid img')].every(i => i.complete)")
            first = page.locator("#sample-grid img").first.evaluate(COLOUR)
            assert (first["w"], first["h"]) == (16, 16) and first["spread"] > 1  # a colour image, at the model's size
            assert page.locator("#pad").evaluate("(c) => [c.width, c.height]") == [16, 16]
            rgb = np.random.default_rng(5).integers(0, 256, (40, 40, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(tmp_path / "upload.png")  # any size: drawn onto the 16×16 pad
            page.set_input_files("#upload", str(tmp_path / "upload.png"))
            expect(page.locator("#score-log_likelihood")).to_have_text(re.compile(r"^-?\d+\.\d\d$"), timeout=15_000)
            page.select_option("#model", "own-8x8")
            expect(page.locator("#sample-grid img")).to_have_count(16)
            assert page.locator("#pad").evaluate("(c) => [c.width, c.height]") == [8, 8]
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=ARTIFACTS / "playground-own-images.png", full_page=True)
            browser.close()
        assert errors == []
    finally:
        server.stop()


def test_the_anomaly_score_flags_noise_and_constants_on_small_synthetic_data(client):
    """The squares model's calibration came from its own validation split (40 images) at export."""
    inside = squares(40, seed=9) / 255.0  # more of the training distribution
    rng = np.random.default_rng(4)
    noise = rng.random((20, 16, 16, 3))
    constants = np.repeat(rng.random((20, 1, 1, 3)), 16, 1).repeat(16, 2)
    verdicts = {
        name: client.post("/anomaly", json={"model": "own-squares", "inputs": images.tolist(), "seed": 0}).json()
        for name, images in (("inside", inside), ("noise", noise), ("constants", constants))
    }
    assert all(verdicts["noise"]["outlier"]) and all(verdicts["constants"]["outlier"])
    assert np.mean(verdicts["inside"]["outlier"]) <= 0.25
    assert min(verdicts["noise"]["score"]) > np.median(verdicts["inside"]["score"])
