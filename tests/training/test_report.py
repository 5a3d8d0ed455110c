"""The report's figures, and the latent map's geometry that lets a click decode the point under it."""

import json

import numpy as np
import pytest
from PIL import Image

from tests.training.conftest import TINY
from training import report, train
from training.config import load_config


@pytest.mark.parametrize("latent_dim", [2, 4])
def test_report_writes_figures_and_a_map_geometry_that_inverts(tmp_path, latent_dim):
    cfg = load_config("fashion-mnist", [*TINY, "train.epochs=1", f"model.latent_dim={latent_dim}"])
    train.fit(cfg, tmp_path / "run", progress=False)
    written = {p.name for p in report.write_report(tmp_path / "run", tmp_path / "report")}
    assert {"curves.png", "samples.png", "latent_map.png", "latent_map.json"} <= written
    assert ("manifold.png" in written) == (latent_dim == 2)

    geometry = json.loads((tmp_path / "report" / "latent_map.json").read_text())
    with Image.open(tmp_path / "report" / "latent_map.png") as image:
        width, height = image.size
    assert (geometry["width"], geometry["height"]) == (width, height)
    left, top, right, bottom = geometry["axes_px"]
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    components, center = np.asarray(geometry["components"]), np.asarray(geometry["center"])
    assert components.shape == (2, latent_dim) and center.shape == (latent_dim,)
    np.testing.assert_allclose(
        components @ components.T, np.eye(2), atol=1e-5
    )  # orthonormal: z -> map -> z on the plane
    if latent_dim == 2:
        np.testing.assert_allclose(components, np.eye(2))
        np.testing.assert_allclose(center, 0)
