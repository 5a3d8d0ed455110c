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


def stop_in_the_third_epoch(cfg, run_dir, monkeypatch) -> None:
    """A run that dies (KeyboardInterrupt) at its third validation: two epochs are checkpointed."""
    real, calls = train.evidence_over, {"n": 0}

    def crash_on_third_validation(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train, "evidence_over", crash_on_third_validation)
    with pytest.raises(KeyboardInterrupt):
        train.fit(cfg, run_dir, progress=False)
    monkeypatch.setattr(train, "evidence_over", real)


def test_resume_after_a_crash_reproduces_the_uninterrupted_run(tmp_path, tiny_config, monkeypatch):
    cfg = tiny_config()
    straight = train.fit(cfg, tmp_path / "straight", progress=False)

    stop_in_the_third_epoch(cfg, tmp_path / "resumed", monkeypatch)
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_recipe_resumes_exactly_with_its_moving_average_and_k_draws(tmp_path, tiny_config, monkeypatch):
    """IWAE training (K = 4) and the weights' moving average: a run stopped after its second epoch
    and resumed ends bit for bit where the uninterrupted one does, average included."""
    cfg = tiny_config("train.iwae_samples=4", "train.ema_decay=0.9", "train.kl_warmup_epochs=1")
    straight = train.fit(cfg, tmp_path / "straight", progress=False)
    stop_in_the_third_epoch(cfg, tmp_path / "resumed", monkeypatch)
    resumed = train.fit(cfg, tmp_path / "resumed", resume=True, progress=False)
    a, b = (torch.load(p, weights_only=False) for p in (straight, resumed))
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part]), part
    # The average is what gets validated and exported: it differs from the last weights.
    _, exported, _ = train.load_checkpoint(straight)
    averaged = {k.removeprefix("module."): v for k, v in a["ema"].items() if k.startswith("module.")}
    assert all(torch.equal(exported.state_dict()[k], averaged[k]) for k in averaged)
    assert not all(torch.equal(a["model"][k], averaged[k]) for k in averaged)


def test_importance_weighted_training_optimises_the_tighter_bound(tmp_path, tiny_config):
    """With K > 1 the loss is −L_K: after warm-up the training loss sits below −ELBO on the same batches."""
    cfg = tiny_config("train.iwae_samples=8", "train.epochs=2", "train.kl_warmup_epochs=0")
    train.fit(cfg, tmp_path / "run", progress=False)
    history = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(h["train_loss"] < -h["train_elbo"] for h in history)  # −L_K < −ELBO: the bound is tighter


@pytest.mark.parametrize("override, message", [("train.iwae_samples=0", "iwae_samples"), ("train.ema_decay=1", "ema")])
def test_the_recipe_options_are_checked(tiny_config, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(override)
