"""vae_client against a live service: API key on, a tiny queue (503s), unknown models, bad shapes.

Every value is checked against the REST answer to the same request, bit for bit.
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import venv

import httpx
import numpy as np
import pytest
from PIL import Image
from vae_client import AsyncClient, Busy, Client, Invalid, NotFound, Timeout, Unauthorized
from vae_client.cli import main as cli

from tests.contract.conftest import ROOT, start_server

KEY = "client-key"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    settings = {"api_keys": KEY, "max_queue_rows": 2048, "max_sample_rows": 2048, "max_request_rows": 256,
                "max_concurrent_runs": 1}  # fmt: skip
    server, url = start_server(ROOT / "models", tmp_path_factory.mktemp("client") / "server.log", **settings)
    yield url
    server.stop()


@pytest.fixture
def vae(url):
    with Client(url, api_key=KEY) as client:
        yield client


def rest(url: str, path: str, body: dict) -> dict:
    response = httpx.post(url + path, json=body, headers={"authorization": f"Bearer {KEY}"}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def fashion(n: int) -> np.ndarray:
    from training.data import read_idx

    return read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")[:n]  # uint8 (n, 28, 28)


def test_every_call_matches_the_rest_answer_bit_for_bit(vae, url):
    samples = vae.sample(4, seed=1)
    reference = rest(url, "/sample", {"n": 4, "seed": 1})
    assert samples.images.shape == (4, 28, 28) and samples.images.dtype == np.float32
    np.testing.assert_array_equal(samples.images, np.asarray(reference["images"], np.float32))
    np.testing.assert_array_equal(samples.latents, np.asarray(reference["latents"], np.float32))
    assert (samples.seed, samples.model) == (1, "fashion-mnist")

    x = fashion(3) / 255.0
    encoding = vae.encode(x, samples=2, seed=5)
    reference = rest(url, "/encode", {"inputs": x.tolist(), "samples": 2, "seed": 5})
    for name in ("mean", "log_var", "z"):
        np.testing.assert_array_equal(getattr(encoding, name), np.asarray(reference[name], np.float32))
    assert encoding.z.shape == (3, 2, 32) and vae.encode(x).z is None

    images = vae.decode(encoding.mean)
    reference = rest(url, "/decode", {"latents": encoding.mean.tolist()})
    np.testing.assert_array_equal(images, np.asarray(reference["images"], np.float32))

    evidence = vae.elbo(x > 0.5, samples=10, seed=2)
    reference = rest(url, "/elbo", {"inputs": (x > 0.5).astype(float).tolist(), "samples": 10, "seed": 2})
    for name in ("elbo", "reconstruction", "kl", "log_likelihood", "gap"):
        np.testing.assert_array_equal(getattr(evidence, name), np.asarray(reference[name], np.float32))

    flags = vae.anomaly(x, seed=3, maps=True)
    reference = rest(url, "/anomaly", {"inputs": x.tolist(), "seed": 3, "maps": True})
    np.testing.assert_allclose(flags.score, reference["score"], rtol=1e-12)
    assert list(flags.outlier) == reference["outlier"] and flags.maps.shape == (3, 28, 28)
    assert set(flags.statistics) == set(reference["statistics"])

    assert {m["name"] for m in vae.models()} >= {"fashion-mnist", "fashion-mnist-2d"}
    assert vae.health()["status"] == "ready"


def test_json_on_the_wire_gives_the_same_values(url):
    with Client(url, api_key=KEY, binary=False) as as_json, Client(url, api_key=KEY) as as_npy:
        x = fashion(2) / 255.0
        a, b = as_json.elbo(x, samples=5, seed=1), as_npy.elbo(x, samples=5, seed=1)
        np.testing.assert_array_equal(a.log_likelihood, b.log_likelihood)
        np.testing.assert_array_equal(as_json.sample(2, seed=3).images, as_npy.sample(2, seed=3).images)


def test_images_in_every_form_give_the_same_answer(vae, tmp_path):
    pixels = fashion(2)  # uint8
    paths = []
    for i, image in enumerate(pixels):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(image).save(paths[-1])
    expected = vae.elbo(pixels / 255.0, seed=0).elbo
    forms = {
        "uint8 batch": pixels,
        "float batch": pixels.astype(np.float32) / 255,
        "list of single images": [pixels[0], pixels[1]],
        "PIL images": [Image.fromarray(p) for p in pixels],
        "paths": [str(p) for p in paths],
        "Path objects": paths,
    }
    for form, images in forms.items():
        np.testing.assert_array_equal(vae.elbo(images, seed=0).elbo, expected, err_msg=form)
    np.testing.assert_array_equal(vae.elbo(pixels[0], seed=0).elbo, expected[:1])  # one image


def test_errors_are_typed(url):
    with Client(url) as no_key, pytest.raises(Unauthorized) as missing:
        no_key.sample(1)
    assert missing.value.status == 401 and "API key" in str(missing.value.detail)
    with Client(url, api_key=KEY) as vae:
        with pytest.raises(NotFound, match="no-such-model"):
            vae.sample(1, model="no-such-model")
        with pytest.raises(Invalid) as bad_shape:
            vae.elbo(np.zeros((2, 27, 27)))
        assert "inputs" in bad_shape.value.fields and "784 numbers" in bad_shape.value.fields["inputs"]
        with pytest.raises(Invalid) as bad_option:
            vae.elbo(np.zeros((1, 28, 28)), samples=0)
        assert "samples" in bad_option.value.fields
    # A server that takes the connection and never answers: the client's own timeout, whatever the
    # server's admission would have said of a 1 ms deadline.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        silent_url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with Client(silent_url, api_key=KEY, timeout=0.2, retries=0) as hasty, pytest.raises(Timeout):
            hasty.sample(1)


@pytest.mark.slow
def test_a_full_queue_is_retried_then_busy(url):
    """The queue holds 2048 score rows: 8 images × K=256 fills it, so concurrent requests get 503."""
    heavy = fashion(8) / 255.0

    async def burst(retries: int) -> list:
        async with AsyncClient(url, api_key=KEY, retries=retries) as vae:
            return await asyncio.gather(*(vae.elbo(heavy, samples=256) for _ in range(6)), return_exceptions=True)

    without = asyncio.run(burst(0))
    assert any(isinstance(r, Busy) and r.status == 503 for r in without)
    assert all(isinstance(r, Busy) or hasattr(r, "elbo") for r in without)
    with_retries = asyncio.run(burst(8))  # Retry-After: 1, jittered: the queue frees up meanwhile
    assert all(hasattr(r, "elbo") for r in with_retries), with_retries


def test_the_async_client_gives_what_the_sync_one_does(vae, url):
    async def go():
        async with AsyncClient(url, api_key=KEY) as avae:
            return await avae.sample(3, seed=9), await avae.encode(fashion(2), seed=1, samples=1)

    samples, encoding = asyncio.run(go())
    np.testing.assert_array_equal(samples.images, vae.sample(3, seed=9).images)
    np.testing.assert_array_equal(encoding.z, vae.encode(fashion(2), seed=1, samples=1).z)


def test_the_cli(url, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("VAE_API_KEY", KEY)
    assert cli(["--url", url, "sample", "-n", "16", "--seed", "1", "-o", str(tmp_path / "grid.png")]) == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (8 * 29 - 1, 2 * 29 - 1) and grid.mode == "L"
    Image.fromarray(fashion(1)[0]).save(tmp_path / "a.png")
    capsys.readouterr()
    assert cli(["--url", url, "elbo", str(tmp_path / "a.png")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert (
        table[0].split("\t") == ["image", "elbo", "reconstruction", "kl", "log_likelihood", "gap"] and len(table) == 2
    )
    assert cli(["--url", url, "encode", str(tmp_path / "a.png")]) == 0
    assert len(capsys.readouterr().out.split("\t")[1].split()) == 32
    assert cli(["--url", url, "models"]) == 0
    assert "fashion-mnist\t1\tready\t28×28×1\t32\tbernoulli" in capsys.readouterr().out
    monkeypatch.delenv("VAE_API_KEY")
    assert cli(["--url", url, "models"]) == 0  # /models is open
    assert cli(["--url", url, "sample", "-o", str(tmp_path / "x.png")]) == 1
    assert "error: 401" in capsys.readouterr().err


@pytest.mark.slow
def test_a_fresh_virtualenv_with_only_the_client_runs_every_call(url, tmp_path):
    """pip install ./clients/python: httpx and numpy come along; FastAPI, onnxruntime and torch do not."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    install = subprocess.run([python, "-m", "pip", "install", "-q", str(ROOT / "clients" / "python")],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert install.returncode == 0, install.stderr[-2000:]
    frozen = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True).stdout.lower()
    assert "httpx" in frozen and "numpy" in frozen
    assert not any(name in frozen for name in ("fastapi", "onnxruntime", "torch", "pillow"))
    script = f"""
import numpy as np
from vae_client import Client, NotFound
with Client({url!r}, api_key={KEY!r}) as vae:
    s = vae.sample(4, seed=1)
    e = vae.encode(s.images, samples=2, seed=0)
    d = vae.decode(e.mean)
    v = vae.elbo(s.images > 0.5, samples=5)
    a = vae.anomaly(s.images)
    assert d.shape == (4, 28, 28) and e.z.shape == (4, 2, 32) and v.gap.shape == (4,) and a.score.shape == (4,)
    assert vae.models() and vae.health()["status"] == "ready"
    try:
        vae.sample(1, model="nope")
    except NotFound:
        print("ok")
"""
    run = subprocess.run([python, "-c", script], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ""}, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]
    grid = tmp_path / "grid.png"
    command = [env_dir / "bin" / "vae-client", "--url", url, "sample", "-n", "4", "-o", str(grid)]
    env = {**os.environ, "VAE_API_KEY": KEY}
    cli_run = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert cli_run.returncode == 0 and grid.read_bytes().startswith(b"\x89PNG"), cli_run.stderr
