"""A short real training run: the loss falls, seeds reproduce, resume continues exactly."""

import json

import pytest
import torch

from training import train
from training.config import ConfigError


def _weights(path):
    return torch.load(path, weights_only=False)["model"]


def test_short_training_lowers_the_loss(tmp_path, tiny_config):
    cfg = tiny_config("train.epochs=4")
    best = train.fit(cfg, tmp_path / "run", progress=False, command="python -m training fit tiny")
    assert torch.load(best, weights_only=False)["command"] == "python -m training fit tiny"  # for the manifest
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    assert history[-1]["train_loss"] < history[0]["train_loss"] - 20
    assert history[-1]["val_elbo"] > history[0]["val_elbo"]
    assert best.is_file()


def test_same_seed_same_model_and_another_seed_differs(tmp_path, tiny_config):
    a = train.fit(tiny_config("train.epochs=1"), tmp_path / "a", progress=False)
    b = train.fit(tiny_config("train.epochs=1"), tmp_path / "b", progress=False)
    c = train.fit(tiny_config("train.epochs=1", "train.seed=1"), tmp_path / "c", progress=False)
    wa, wb, wc = _weights(a), _weights(b), _weights(c)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path, tiny_config, monkeypatch):
    cfg = tiny_config()
    straight = train.fit(cfg, tmp_path / "straight", progress=False)

    real = train.evidence_over
    calls = {"n": 0}

    def crash_on_third_validation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "evidence_over", crash_on_third_validation)
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg, tmp_path / "resumed", progress=False)
    monkeypatch.setattr(train, "evidence_over", real)
    assert torch.load(tmp_path / "resumed" / "last.pt", weights_only=False)["epoch"] == 2
    resumed = train.fit(cfg, tmp_path / "resumed", resume=True, progress=False)
    ws, wr = _weights(straight), _weights(resumed)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)
    lines = (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]


def test_resume_refuses_a_different_config(tmp_path, tiny_config):
    train.fit(tiny_config("train.epochs=1"), tmp_path / "run", progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train.fit(tiny_config("train.epochs=1", "train.lr=0.01"), tmp_path / "run", resume=True, progress=False)


def test_evaluate_reports_the_theory_quantities(tmp_path, tiny_config):
    cfg = tiny_config("train.epochs=1")
    best = train.fit(cfg, tmp_path / "run", progress=False)
    _, model, _ = train.load_checkpoint(best)
    splits = train.load_data(cfg)
    metrics = train.evaluate(cfg, model, splits, progress=False)
    assert metrics["test_images"] == 10_000 and metrics["iwae_samples"] == 8
    assert metrics["test_elbo"] == pytest.approx(metrics["test_reconstruction"] - metrics["test_kl"], abs=1e-3)
    assert metrics["test_log_likelihood"] > metrics["test_elbo"]
    assert metrics["test_gap"] == pytest.approx(metrics["test_log_likelihood"] - metrics["test_elbo"], abs=1e-3)
    assert 0 <= metrics["active_units"] <= 4 and len(metrics["latent_activity"]) == 4
