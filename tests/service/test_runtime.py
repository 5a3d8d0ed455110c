"""Loading models: sha256 checks, refusing broken models while serving the rest, providers."""

import asyncio
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.manifest import ManifestError, load_manifest, sha256_of
from service.metrics import Metrics
from service.registry import Registry
from service.runtime import CPU, requested_providers
from service.settings import Settings

SHIPPED = Path(__file__).resolve().parents[2] / "models"
SOURCE = "fashion-mnist-2d"  # the smallest shipped model
BROKEN = ("bad-hash", "bad-weights", "bad-onnx", "no-manifest", "bad-inputs", "bad-shape", "bad-latent-dim",
          "bad-image-shape", "old-manifest")  # fmt: skip


@pytest.fixture
def model_dir(tmp_path):
    """A model dir with one good copy and nine broken copies of a shipped model."""
    for name in ("good", *BROKEN):
        shutil.copytree(SHIPPED / SOURCE, tmp_path / name)
    with (tmp_path / "bad-hash" / "decoder.onnx").open("ab") as f:
        f.write(b"\0")  # one extra byte: the sha256 no longer matches
    weights = tmp_path / "bad-weights" / "weights.bin"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated shared weights
    truncated = tmp_path / "bad-onnx" / "encoder.onnx"
    truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    manifest = json.loads((tmp_path / "bad-onnx" / "manifest.json").read_text())
    manifest["graphs"]["encoder"]["sha256"] = sha256_of(truncated)  # hash fine, ONNX malformed
    (tmp_path / "bad-onnx" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "no-manifest" / "manifest.json").write_text("{not json")
    manifest = json.loads((tmp_path / "bad-inputs" / "manifest.json").read_text())
    manifest["graphs"]["decoder"]["inputs"] = {"latent": [-1, 2]}
    (tmp_path / "bad-inputs" / "manifest.json").write_text(json.dumps(manifest))
    manifest = json.loads((tmp_path / "bad-shape" / "manifest.json").read_text())
    manifest["graphs"]["decoder"]["outputs"]["image"] = [-1, 28, 28]  # the graph gives (B, 784)
    (tmp_path / "bad-shape" / "manifest.json").write_text(json.dumps(manifest))
    manifest = json.loads((tmp_path / "bad-image-shape" / "manifest.json").read_text())
    manifest["image_shape"] = [32, 32, 3]  # the encoder takes 784 values
    (tmp_path / "bad-image-shape" / "manifest.json").write_text(json.dumps(manifest))
    manifest = json.loads((tmp_path / "old-manifest" / "manifest.json").read_text())
    manifest["manifest_version"] = 1
    (tmp_path / "old-manifest" / "manifest.json").write_text(json.dumps(manifest))
    manifest = json.loads((tmp_path / "bad-latent-dim" / "manifest.json").read_text())
    manifest["latent_dim"] = 16  # the graphs are 2-D
    (tmp_path / "bad-latent-dim" / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_broken_models_are_refused_and_the_rest_served(model_dir, caplog):
    registry = Registry(Settings(model_dir=model_dir, default_model="good"), Metrics())
    with caplog.at_level(logging.ERROR, logger="service.registry"):
        registry.load_all()
    assert sorted(registry.models) == ["good"]
    assert set(registry.refused) == set(BROKEN)
    assert "sha256" in registry.refused["bad-hash"] and "decoder.onnx" in registry.refused["bad-hash"]
    assert "sha256" in registry.refused["bad-weights"] and "weights.bin" in registry.refused["bad-weights"]
    assert "invalid JSON" in registry.refused["no-manifest"]
    assert "do not match the manifest" in registry.refused["bad-inputs"]
    assert "image has shape [-1, 784], the manifest says [-1, 28, 28]" in registry.refused["bad-shape"]
    assert "not the 3072 values of image_shape [32, 32, 3]" in registry.refused["bad-image-shape"]
    assert "manifest_version 1 is not one this service reads" in registry.refused["old-manifest"]
    assert "python -m training export" in registry.refused["old-manifest"]
    assert "latent_dim 16 disagrees" in registry.refused["bad-latent-dim"]
    refusals = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == len(registry.refused) and all("\n" not in line for line in refusals)
    assert registry.models["good"].provider == CPU


def test_warm_up_covers_every_bucket_when_padding_and_sets_ready(model_dir):
    registry = Registry(
        Settings(model_dir=model_dir, default_model="good", max_batch_rows=12, pad_batches="true"), Metrics()
    )
    registry.load_all()
    assert not registry.ready
    registry.warm_up()
    assert registry.ready
    model = registry.models["good"]
    assert model.warm_up() == 4 * 5  # 4 graphs × buckets 1, 2, 4, 8, 12


def test_warm_up_without_padding_runs_one_row_and_a_full_batch_and_seeds_the_throughput(model_dir):
    registry = Registry(
        Settings(model_dir=model_dir, default_model="good", max_batch_rows=12, pad_batches="false"), Metrics()
    )
    registry.load_all()
    model = registry.models["good"]
    assert all(b.throughput.seconds_per_row(0.0) is None for b in model.batchers.values())
    assert model.warm_up() == 4 * 2
    assert all(b.throughput.rows == 12 and b.throughput.busy_s > 0 for b in model.batchers.values())


def test_runtime_runs_the_graphs_through_the_batchers(model_dir):
    registry = Registry(Settings(model_dir=model_dir, default_model="good"), Metrics())
    registry.load_all()
    model = registry.models["good"]

    async def main():
        x = (np.random.default_rng(0).random((5, 784)) < 0.3).astype(np.float32)
        alone = await model.encode(x, np.zeros((0, 5, 2), np.float32))
        eps = np.zeros((3, 5, 2), np.float32)
        encoded = await model.encode(x, eps)  # the encoder, then the reparameterize graph
        scores = await model.score(x, eps[:1])
        image = (await model.decode(encoded["mean"]))["image"]
        await registry.close()
        return alone, encoded, scores, image

    alone, encoded, scores, image = asyncio.run(main())
    assert set(alone) == {"mean", "log_var"}
    np.testing.assert_array_equal(alone["mean"], encoded["mean"])
    assert encoded["z"].shape == (5, 3, 2)  # (B, K, Z)
    np.testing.assert_array_equal(encoded["z"][:, 1], encoded["mean"])  # ε = 0: z = μ
    assert image.shape == (5, 784) and scores["elbo"].shape == (5,)
    np.testing.assert_array_equal(scores["log_likelihood"], scores["elbo"])  # K = 1: IWAE is the ELBO
    np.testing.assert_array_equal(scores["gap"], np.zeros(5, np.float32))


def test_manifest_errors_name_the_file(tmp_path):
    with pytest.raises(ManifestError, match="manifest.json: not found"):
        load_manifest(tmp_path)
    shutil.copytree(SHIPPED / SOURCE, tmp_path / "m")
    (tmp_path / "m" / "score.onnx").unlink()
    with pytest.raises(ManifestError, match="score graph file not found"):
        load_manifest(tmp_path / "m")


def test_providers_auto_and_explicit():
    assert requested_providers(Settings(providers="auto"))[-1] == CPU
    assert requested_providers(Settings(providers="CPUExecutionProvider")) == [CPU]
    assert requested_providers(Settings(providers="NoSuchProvider")) == [CPU]


def test_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("VAE_MAX_BATCH_ROWS", "64")
    monkeypatch.setenv("VAE_PROVIDERS", "CUDAExecutionProvider, CPUExecutionProvider")
    monkeypatch.setenv("VAE_MODEL_DIR", "/srv/models")
    settings = Settings()
    assert settings.max_batch_rows == 64 and str(settings.model_dir) == "/srv/models"
    assert settings.provider_list == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setenv("VAE_MAX_BATCH_ROWS", "0")
    with pytest.raises(ValueError, match="max_batch_rows"):
        Settings()
