"""The recipe's measurements: the independent IWAE over the graphs agrees with the training's
own evaluation, and the decoder timing compares models by name and score."""

import numpy as np
import pytest
import torch

from benchmarks import onnx_iwae
from benchmarks.recipe import decoder_rows_per_second
from training import served, train

MODEL = onnx_iwae.ROOT / "models" / "fashion-mnist"


@pytest.mark.slow
def test_the_graphs_iwae_agrees_with_the_training_evaluation():
    """Two estimators of the same log p(x), one numpy over the exported graphs and one torch over
    the objective, with their own ε: per-image means agree within the estimators' noise."""
    x = onnx_iwae.test_images(MODEL)[:40]
    from_graphs = onnx_iwae.log_likelihoods(MODEL, x, samples=200, rows=20, seed=0)
    cfg, model, _ = served.load_served_model(MODEL)
    from_torch = train.evidence_over(model, torch.from_numpy(x), samples=200, rows=20, seed=1, device="cpu")
    per_image = from_graphs - from_torch["log_likelihood"].numpy()
    assert np.abs(per_image).mean() < 1.0  # each a noisy estimate: a nat apart at most on average
    assert per_image.mean() == pytest.approx(0.0, abs=0.25)
    single = onnx_iwae.log_likelihoods(MODEL, x, samples=1, rows=20, seed=0)
    assert single.mean() < from_graphs.mean()  # one draw is the ELBO's estimate: below L_200


def test_decoder_timing_names_each_model_by_its_score():
    rates = decoder_rows_per_second([MODEL], batch=8, rounds=1, seconds=0.05)
    ((label, rows_per_second),) = rates.items()
    assert "fashion-mnist" in label and "test NLL" in label and rows_per_second > 0
