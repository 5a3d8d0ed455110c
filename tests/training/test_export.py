"""Export: ONNX graphs agree with torch, the manifest describes them, K and B stay dynamic."""

import hashlib
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from training import export, served, train
from training.config import Config


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from tests.training.conftest import TINY
    from training.config import load_config

    tmp = tmp_path_factory.mktemp("export")
    cfg = load_config("fashion-mnist", [*TINY, "train.epochs=1"])
    best = train.fit(cfg, tmp / "run", progress=False)
    _, model, _ = train.load_checkpoint(best)
    metrics = train.evaluate(cfg, model, train.load_data(cfg), progress=False)
    (tmp / "run" / "eval.json").write_text(json.dumps(metrics))
    manifest = export.export_model(tmp / "run", tmp / "model", command="pytest")
    return tmp / "model", manifest, cfg


def _session(model_dir, name):
    return ort.InferenceSession(str(model_dir / f"{name}.onnx"), providers=["CPUExecutionProvider"])


def test_manifest_round_trip(exported):
    model_dir, manifest, cfg = exported
    on_disk = json.loads((model_dir / "manifest.json").read_text())
    assert on_disk == manifest
    assert Config.from_dict(on_disk["config"]) == cfg
    assert on_disk["latent_dim"] == 4 and on_disk["likelihood"] == "bernoulli"
    assert on_disk["image_shape"] == [28, 28, 1] and on_disk["manifest_version"] == export.MANIFEST_VERSION
    assert on_disk["command"] == "pytest"
    calibration = on_disk["anomaly"]
    assert calibration["fitted_on"] == {"split": "validation", "images": 500, "densities": 250, "quantiles": 250}
    assert len(calibration["quantiles"]) == 1001 and calibration["quantiles"] == sorted(calibration["quantiles"])
    assert on_disk["metrics"]["iwae_samples"] == 8 and "test_nll" in on_disk["metrics"]
    for name, graph in on_disk["graphs"].items():
        path = model_dir / graph["path"]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == graph["sha256"]
        session = _session(model_dir, name)
        assert [i.name for i in session.get_inputs()] == list(graph["inputs"])
        assert [o.name for o in session.get_outputs()] == list(graph["outputs"])
    assert all(p["max_scaled_error"] <= cfg.export.parity_tolerance for p in on_disk["onnx"]["parity"].values())
    weights = model_dir / on_disk["weights"]["path"]
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == on_disk["weights"]["sha256"]


def test_weights_are_stored_once(exported):
    """The score graph reuses the encoder's and decoder's weights from the shared file."""
    model_dir, manifest, _ = exported
    weights = (model_dir / "weights.bin").stat().st_size
    graphs = sum((model_dir / g["path"]).stat().st_size for g in manifest["graphs"].values())
    _, model, _ = train.load_checkpoint(model_dir.parent / "run" / "best.pt")
    parameter_bytes = sum(p.numel() * 4 for p in model.parameters())
    assert (
        0.9 * parameter_bytes <= weights <= 1.05 * parameter_bytes
    )  # once, not twice (score graph); biases stay inline
    assert graphs < 0.2 * parameter_bytes


def test_graphs_run_with_dynamic_batch_and_k(exported):
    model_dir, _, _ = exported
    rng = np.random.default_rng(0)
    mean, log_var = _session(model_dir, "encoder").run(None, {"x": rng.random((11, 784), dtype=np.float32)})
    assert mean.shape == log_var.shape == (11, 4)
    image, logits = _session(model_dir, "decoder").run(None, {"z": rng.standard_normal((13, 4), dtype=np.float32)})
    assert image.shape == logits.shape == (13, 784) and image.min() >= 0 and image.max() <= 1
    x = (rng.random((5, 784)) < 0.5).astype(np.float32)
    score = _session(model_dir, "score")
    elbo, recon, kl, ll, gap = score.run(None, {"x": x, "eps": rng.standard_normal((1, 5, 4), dtype=np.float32)})
    np.testing.assert_array_equal(ll, elbo)  # IWAE with K = 1 is the ELBO
    np.testing.assert_array_equal(gap, np.zeros(5, np.float32))
    np.testing.assert_allclose(elbo, recon - kl, rtol=1e-6)
    elbo, recon, kl2, ll, gap = score.run(None, {"x": x, "eps": rng.standard_normal((17, 5, 4), dtype=np.float32)})
    assert np.all(ll >= elbo) and np.all(gap > 0) and np.allclose(kl2, kl)
    np.testing.assert_allclose(gap, ll - elbo, atol=1e-3)
    # the score graph's KL is the closed form from the encoder's outputs
    m, lv = _session(model_dir, "encoder").run(None, {"x": x})
    np.testing.assert_allclose(kl, 0.5 * (np.exp(lv) + m**2 - 1 - lv).sum(-1), rtol=1e-5)


def test_reparameterize_graph_is_the_objectives(exported):
    model_dir, _, _ = exported
    rng = np.random.default_rng(1)
    mean, log_var = rng.standard_normal((3, 4), dtype=np.float32), rng.standard_normal((3, 4), dtype=np.float32)
    eps = rng.standard_normal((5, 3, 4), dtype=np.float32)
    (z,) = _session(model_dir, "reparameterize").run(None, {"mean": mean, "log_var": log_var, "eps": eps})
    np.testing.assert_allclose(z, mean + np.exp(0.5 * log_var) * eps, rtol=1e-6)


def test_export_fails_above_the_parity_tolerance(tmp_path, exported, monkeypatch):
    model_dir, _, _ = exported
    run_dir = model_dir.parent / "run"
    monkeypatch.setattr(export, "_parity", lambda *a: (1.0, 1.0))
    with pytest.raises(export.ExportError, match="parity"):
        export.export_model(run_dir, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_export_needs_a_checkpoint_then_an_evaluation(tmp_path, exported):
    with pytest.raises(FileNotFoundError, match="train first"):
        export.export_model(tmp_path / "nothing", tmp_path / "out")
    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "best.pt").write_bytes((exported[0].parent / "run" / "best.pt").read_bytes())  # trained, never evaluated
    with pytest.raises(FileNotFoundError, match="eval.json not found: run `evaluate` before `export`"):
        export.export_model(trained, tmp_path / "out")


@pytest.mark.slow
def test_reexport_rebuilds_the_same_model_from_its_graphs(tmp_path, exported):
    """Weights, metrics and outputs survive a re-export; only the layout is the current one."""
    import shutil

    model_dir, manifest, _ = exported
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    again = export.reexport(copy)
    assert again["weights"]["sha256"] == manifest["weights"]["sha256"]
    assert again["graphs"]["encoder"]["sha256"] == manifest["graphs"]["encoder"]["sha256"]
    same = ("metrics", "training", "command", "config", "anomaly")  # the calibration too: same split, same seed
    assert {k: again[k] for k in same} == {k: manifest[k] for k in same}
    without_bits = json.loads((copy / "manifest.json").read_text())
    bits = without_bits["metrics"].pop("test_bits_per_dim")  # binarized data: the test NLL in bits
    (copy / "manifest.json").write_text(json.dumps(without_bits))
    assert export.reexport(copy)["metrics"]["test_bits_per_dim"] == pytest.approx(bits, rel=1e-12)
    rng = np.random.default_rng(3)
    inputs = {
        "x": (rng.random((4, 784)) < 0.5).astype(np.float32),
        "eps": rng.standard_normal((6, 4, 4), dtype=np.float32),
    }
    for want, got in zip(_session(model_dir, "score").run(None, inputs), _session(copy, "score").run(None, inputs)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_gaussian_model_exports_its_learned_sigma(tmp_path):
    from tests.training.conftest import TINY
    from training.config import load_config

    cfg = load_config("fashion-mnist", [*TINY, "train.epochs=1", "model.likelihood='gaussian'"])
    best = train.fit(cfg, tmp_path / "run", progress=False)
    _, model, _ = train.load_checkpoint(best)
    (tmp_path / "run" / "eval.json").write_text(
        json.dumps(train.evaluate(cfg, model, train.load_data(cfg), progress=False))
    )
    manifest = export.export_model(tmp_path / "run", tmp_path / "model")
    assert manifest["likelihood"] == "gaussian" and manifest["sigma"] == pytest.approx(model.sigma)
    # a manifest without bits/dim gets it measured on re-export: the dequantized pass, as the evaluation ran it
    bits = manifest["metrics"].pop("test_bits_per_dim")
    (tmp_path / "model" / "manifest.json").write_text(json.dumps(manifest))
    again = export.reexport(tmp_path / "model")
    assert again["metrics"]["test_bits_per_dim"] == pytest.approx(bits, rel=1e-5)
    assert bits != pytest.approx(train.bits_per_dim(manifest["metrics"]["test_nll"], 784, "gaussian"), rel=1e-3)
    assert list(manifest["graphs"]["decoder"]["outputs"]) == ["image", "log_scale"]
    z = np.zeros((2, 4), np.float32)
    image, log_scale = _session(tmp_path / "model", "decoder").run(None, {"z": z})
    np.testing.assert_allclose(np.exp(log_scale), manifest["sigma"], rtol=1e-5)
    assert image.min() >= 0 and image.max() <= 1


def test_a_run_starts_from_a_served_models_weights(tmp_path, exported):
    """``train.init_from``: the first step starts from the served graphs' weights, and the new
    model's manifest keeps where they came from, since the folder may be overwritten."""
    from tests.training.conftest import TINY
    from training.config import load_config

    model_dir, manifest, _ = exported
    cfg = load_config("fashion-mnist", [*TINY, "train.epochs=1", f"train.init_from={model_dir}"])
    model = train.make_model(cfg)
    origin = train.warm_start(model, cfg)
    weights = served.load_served_model(model_dir)[1].state_dict()
    assert all(torch.equal(model.state_dict()[k], weights[k]) for k in weights)
    assert origin["weights_sha256"] == manifest["weights"]["sha256"] and origin["command"] == "pytest"
    assert origin["test_nll"] == manifest["metrics"]["test_nll"]

    best = train.fit(cfg, tmp_path / "run", progress=False)
    assert torch.load(best, weights_only=False)["initialized_from"] == origin
    (tmp_path / "run" / "eval.json").write_text(json.dumps(manifest["metrics"]))
    again = export.export_model(tmp_path / "run", tmp_path / "model")
    assert again["training"]["initialized_from"] == origin
    assert again["config"]["train"]["init_from"] == str(model_dir)


def test_a_served_model_of_another_shape_cannot_start_a_run(exported):
    from tests.training.conftest import TINY
    from training.config import ConfigError, load_config

    model_dir, _, _ = exported
    cfg = load_config("fashion-mnist", [*TINY, "model.latent_dim=8", f"train.init_from={model_dir}"])
    with pytest.raises(ConfigError, match=r"different model.latent_dim than this run"):
        train.warm_start(train.make_model(cfg), cfg)
