"""IDX reading and the checksummed, mirror-retrying downloader (against a local HTTP server)."""

import functools
import gzip
import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch

from training import data
from training.data import read_idx, write_idx
from training.errors import DataError


@pytest.mark.parametrize("name", ["images-idx3-ubyte", "images-idx3-ubyte.gz"])
def test_idx_round_trip(tmp_path, name):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    write_idx(tmp_path / name, array)
    got = read_idx(tmp_path / name)
    assert got.dtype == np.uint8 and np.array_equal(got, array)


def test_idx_other_dtypes(tmp_path):
    array = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    write_idx(tmp_path / "f.idx", array)
    assert np.array_equal(read_idx(tmp_path / "f.idx"), array)


def _raw(array):
    return bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape) + array.tobytes()


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "bad magic"),
        (b"\x00\x00\x07\x01\x00\x00\x00\x01\x00", "bad magic"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
        (_raw(np.zeros((2, 3), np.uint8))[:-1], "truncated"),
        (_raw(np.zeros((2, 3), np.uint8)) + b"\x00", "trailing bytes"),
        (gzip.compress(_raw(np.zeros((2, 3), np.uint8)))[:-6], "corrupt gzip"),
    ],
)
def test_idx_rejects_bad_files_with_a_clear_message(tmp_path, content, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_missing_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope.gz")


@pytest.fixture
def http_server(tmp_path):
    """Two 'mirrors' on 127.0.0.1: /bad/ serves a corrupted copy, /good/ the real file."""
    root = tmp_path / "www"
    (root / "good").mkdir(parents=True)
    (root / "bad").mkdir()
    handler = functools.partial(QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def test_download_verifies_sha256_and_falls_back_to_the_next_mirror(tmp_path, http_server):
    root, url = http_server
    array = np.random.default_rng(0).integers(0, 255, (5, 28, 28), dtype=np.uint8)
    write_idx(root / "good" / "imgs.gz", array)
    (root / "bad" / "imgs.gz").write_bytes(b"not the file")
    digest = hashlib.sha256((root / "good" / "imgs.gz").read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    path = data.download("imgs.gz", digest, cache, mirrors=[f"{url}/missing/", f"{url}/bad/", f"{url}/good/"])
    assert np.array_equal(read_idx(path), array)
    assert [p.name for p in cache.iterdir()] == ["imgs.gz"]  # no temp files left behind
    # A cached, verified file is not fetched again: with no mirror at all it still resolves.
    assert data.download("imgs.gz", digest, cache, mirrors=[]) == path


def test_download_fails_clearly_when_every_mirror_is_bad(tmp_path, http_server):
    root, url = http_server
    (root / "bad" / "imgs.gz").write_bytes(b"corrupted")
    with pytest.raises(DataError) as err:
        data.download("imgs.gz", "0" * 64, tmp_path / "cache", mirrors=[f"{url}/bad/", f"{url}/missing/"])
    message = str(err.value)
    assert "sha256" in message and "404" in message
    assert not any((tmp_path / "cache").iterdir())


def test_mnist_is_downloaded_from_the_mirrors_into_the_cache(tmp_path, http_server, monkeypatch):
    root, url = http_server
    rng = np.random.default_rng(1)
    arrays = {
        "train_images": rng.integers(0, 255, (30, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 30, dtype=np.uint8),
        "test_images": rng.integers(0, 255, (10, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 10, dtype=np.uint8),
    }
    sums = {}
    for key, name in data.FILES.items():
        write_idx(root / "good" / name, arrays[key])
        sums[name] = hashlib.sha256((root / "good" / name).read_bytes()).hexdigest()
    monkeypatch.setattr(data, "MNIST_SHA256", sums)
    monkeypatch.setenv("VAE_DATA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(data, "MNIST_MIRRORS", (f"{url}/bad/", f"{url}/good/"))
    (root / "bad" / "t10k-labels-idx1-ubyte.gz").write_bytes(b"corrupt")
    files = data.dataset_files("mnist", None)
    assert all(p.parent == tmp_path / "cache" / "mnist" for p in files.values())
    splits = data.idx_splits("mnist", None, validation_size=5)
    assert splits.train.shape == (25, 784) and splits.validation.shape == (5, 784) and splits.test.shape == (10, 784)
    assert float(splits.train.max()) <= 1.0 and float(splits.train.min()) >= 0.0


def test_data_dir_missing_files_are_named(tmp_path):
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        data.dataset_files("fashion-mnist", str(tmp_path))


def test_static_binarization_is_the_protocol():
    x = torch.rand(4, 784, generator=torch.Generator().manual_seed(3))
    expected = (torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < x).float()
    assert torch.equal(data.binarize_static(x), expected)
    assert set(torch.unique(data.binarize_dynamic(x, torch.Generator().manual_seed(0))).tolist()) <= {0.0, 1.0}
