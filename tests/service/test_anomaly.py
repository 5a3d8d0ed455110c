"""The anomaly score's arithmetic without HTTP: densities, percentiles, the fit and its halves."""

import numpy as np
import pytest

from service import anomaly


def fake_statistics(rng, n, shift=0.0):
    """Score-graph outputs, posterior means (Z = 3) and 8×8 images of n inputs; ``shift`` moves them off."""
    scores = {k: rng.normal(shift, 1.0, n).astype(np.float32) for k in ("log_likelihood", "kl", "gap")}
    scores["log_likelihood"] -= 100
    images = np.clip(rng.normal(0.5 + shift / 10, 0.1, (n, 8, 8)), 0, 1)
    return scores, rng.normal(shift, 1.0, (n, 3)), images


@pytest.fixture
def calibration():
    rng = np.random.default_rng(0)
    a, b = fake_statistics(rng, 400), fake_statistics(rng, 400)
    return anomaly.fit(anomaly.input_statistics(a[0], a[2]), a[1], anomaly.input_statistics(b[0], b[2]), b[1], rng)


def test_percentiles_are_monotone_in_the_score_and_span_0_to_100(calibration):
    q = calibration["quantiles"]
    assert len(q) == anomaly.QUANTILES and list(q) == sorted(q)
    scores = np.linspace(min(q) - 10, max(q) + 10, 500)
    p = anomaly.percentile(scores, q)
    assert np.all(np.diff(p) >= 0) and p[0] == 0 and p[-1] == 100


def test_inputs_like_the_calibration_are_typical_and_shifted_ones_are_outliers(calibration):
    rng = np.random.default_rng(1)
    typical, far = fake_statistics(rng, 300), fake_statistics(rng, 300, shift=6.0)
    inside = anomaly.judge(
        anomaly.statistics(*typical[:1], typical[1], typical[2], calibration["latent"]), calibration, 99
    )
    outside = anomaly.judge(anomaly.statistics(*far[:1], far[1], far[2], calibration["latent"]), calibration, 99)
    assert inside.outlier.mean() < 0.05 and outside.outlier.all()
    assert 30 < np.median(inside.percentile) < 70  # held-out quantiles: in-distribution percentiles near uniform
    assert np.all(outside.score > np.median(inside.score))


def test_the_fit_is_reproducible_and_the_halves_play_separate_parts():
    def fit(held_out_seed):
        a, b = (
            fake_statistics(np.random.default_rng(10), 200),
            fake_statistics(np.random.default_rng(held_out_seed), 200),
        )
        rng = np.random.default_rng(0)
        return anomaly.fit(anomaly.input_statistics(a[0], a[2]), a[1], anomaly.input_statistics(b[0], b[2]), b[1], rng)

    assert fit(11) == fit(11)
    other = fit(12)  # another held-out half: the same densities, other quantiles
    assert other["kde"] == fit(11)["kde"] and other["latent"] == fit(11)["latent"]
    assert other["quantiles"] != fit(11)["quantiles"]


def test_latent_distance_is_zero_at_the_center_and_grows_away_from_it(calibration):
    center = np.asarray(calibration["latent"]["center"])
    d = anomaly.latent_distance(np.stack([center, center + 1, center + 3]), calibration["latent"])
    assert d[0] == pytest.approx(0, abs=1e-9) and 0 < d[1] < d[2]


def test_complexity_discounts_simple_images():
    rng = np.random.default_rng(2)
    flat, noisy = np.full((1, 16, 16), 0.5), rng.random((1, 16, 16))
    assert anomaly.png_bits(flat)[0] < anomaly.png_bits(noisy)[0] / 4
    same = {"log_likelihood": np.array([-50.0]), "kl": np.array([1.0]), "gap": np.array([0.1])}
    assert anomaly.input_statistics(same, flat)["complexity"] > anomaly.input_statistics(same, noisy)["complexity"]
