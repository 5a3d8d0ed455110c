"""Your own images: folders of any mode, arrays, sizes, channels, bad files, splits and the decode cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from training.config import load_config
from training.data import load_splits
from training.errors import DataError
from training.images import load_images

MODES = ("RGB", "RGBA", "P", "L", "LA", "I;16")


def write_folder(root, size=(12, 16), per_class=12, classes=("cats", "dogs"), modes=MODES, seed=0):
    """Class subfolders of PNGs (H, W = size) in a mix of modes; returns the RGB arrays written."""
    rng = np.random.default_rng(seed)
    written = {}
    for k, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            rgb = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            image = Image.fromarray(rgb)
            mode = modes[(i + k) % len(modes)]
            if mode == "I;16":
                image = Image.fromarray(np.asarray(image.convert("L")).astype(np.uint16) * 257)
            elif mode != "RGB":
                image = image.convert(mode)
            path = root / name / f"{i:03d}.png"
            image.save(path)
            written[path] = rgb
    return written


def test_a_folder_of_mixed_modes_loads_as_rgb_with_class_labels(tmp_path):
    write_folder(tmp_path / "data")
    images = load_images(tmp_path / "data", None, None, cache_dir=None)
    assert images.pixels.shape == (24, 12, 16, 3) and images.pixels.dtype == np.uint8
    assert images.classes == ("cats", "dogs") and list(np.bincount(images.labels)) == [12, 12]


def test_modes_are_converted_not_rejected(tmp_path):
    rgb = np.random.default_rng(1).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    rgba = np.dstack([rgb, np.full((8, 8), 255, np.uint8)])
    (tmp_path / "d").mkdir()
    Image.fromarray(rgba).save(tmp_path / "d" / "a.png")  # opaque RGBA: its colours, alpha gone
    gray16 = np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000
    Image.fromarray(gray16).save(tmp_path / "d" / "b.png")  # 16-bit grayscale, scaled to 8 bits
    images = load_images(tmp_path / "d", None, None, cache_dir=None)
    np.testing.assert_array_equal(images.pixels[0], rgb)
    np.testing.assert_array_equal(images.pixels[1, ..., 0], np.rint(gray16 / 257).astype(np.uint8))
    assert images.classes == ("",)  # files at the top level: no class folders


def test_channels_and_resizing_follow_the_config(tmp_path):
    write_folder(tmp_path / "data", size=(12, 16))
    gray = load_images(tmp_path / "data", None, 1, cache_dir=None)
    assert gray.pixels.shape == (24, 12, 16, 1)
    resized = load_images(tmp_path / "data", (8, 8), 3, cache_dir=None)
    assert resized.pixels.shape == (24, 8, 8, 3)


def test_images_of_different_sizes_need_image_size(tmp_path):
    write_folder(tmp_path / "data", size=(12, 16), per_class=2, classes=("a",))
    Image.new("RGB", (20, 10)).save(tmp_path / "data" / "a" / "z-wide.png")
    with pytest.raises(
        DataError, match=r"images differ in size: .* is 16×12, .*z-wide.png is 20×10; set data.image_size"
    ):
        load_images(tmp_path / "data", None, None, cache_dir=None)
    assert load_images(tmp_path / "data", (12, 16), None, cache_dir=None).pixels.shape == (3, 12, 16, 3)


def test_a_file_pillow_cannot_read_stops_the_load_and_is_named(tmp_path):
    write_folder(tmp_path / "data", per_class=3, classes=("a",))
    good = (tmp_path / "data" / "a" / "001.png").read_bytes()
    (tmp_path / "data" / "a" / "broken.png").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(DataError, match=r"broken.png: cannot read this image"):
        load_images(tmp_path / "data", None, None, cache_dir=None)


@pytest.mark.parametrize("kind", ["uint8", "float"])
def test_arrays_in_npy_and_npz(tmp_path, kind):
    rng = np.random.default_rng(2)
    pixels = rng.integers(0, 256, (30, 8, 8), dtype=np.uint8)
    array = pixels if kind == "uint8" else pixels.astype(np.float32) / 255
    np.save(tmp_path / "x.npy", array)
    np.savez(tmp_path / "x.npz", images=array)
    for name in ("x.npy", "x.npz"):
        images = load_images(tmp_path / name, None, None, cache_dir=None)
        assert images.pixels.shape == (30, 8, 8, 1)
        np.testing.assert_array_equal(images.pixels[..., 0], pixels)


def test_bad_arrays_are_clear_errors(tmp_path):
    np.save(tmp_path / "wide.npy", np.zeros((3, 8, 8, 2), np.uint8))
    with pytest.raises(DataError, match="C 1, 3 or 4"):
        load_images(tmp_path / "wide.npy", None, None, cache_dir=None)
    np.save(tmp_path / "big.npy", np.full((3, 8, 8), 2.0))
    with pytest.raises(DataError, match=r"float images must be finite values in \[0, 1\]"):
        load_images(tmp_path / "big.npy", None, None, cache_dir=None)
    with pytest.raises(DataError, match="no such file or folder"):
        load_images(tmp_path / "missing", None, None, cache_dir=None)


def test_the_decode_cache_is_reused_and_follows_the_files(tmp_path, caplog):
    write_folder(tmp_path / "data", per_class=4)
    cache = tmp_path / "cache"
    first = load_images(tmp_path / "data", None, None, cache)
    with caplog.at_level("INFO", logger="training.images"):
        second = load_images(tmp_path / "data", None, None, cache)
    assert "from the decode cache" in caplog.text
    np.testing.assert_array_equal(first.pixels, second.pixels)
    assert first.classes == second.classes and len(list(cache.iterdir())) == 1
    changed = tmp_path / "data" / "cats" / "000.png"
    Image.new("RGB", (16, 12), (255, 0, 0)).save(changed)
    os.utime(changed, ns=(1, 1))  # a new mtime and content: a new key
    third = load_images(tmp_path / "data", None, None, cache)
    assert third.sha256 != first.sha256 and (third.pixels[0] == [255, 0, 0]).all()


def test_splits_are_seeded_fractions(tmp_path):
    write_folder(tmp_path / "data", per_class=25)
    cfg = load_config("images", [f"data.path='{tmp_path / 'data'}'", "data.test_fraction=0.2"])
    splits = load_splits(cfg.data)
    assert (len(splits.train), len(splits.validation), len(splits.test)) == (35, 5, 10)
    assert splits.image_shape == (12, 16, 3) and splits.train.shape[1] == 12 * 16 * 3
    again = load_splits(cfg.data)
    np.testing.assert_array_equal(splits.test.numpy(), again.test.numpy())
    other = load_splits(load_config("images", [f"data.path='{tmp_path / 'data'}'", "data.split_seed=1"]).data)
    assert not np.array_equal(splits.test.numpy(), other.test.numpy())
