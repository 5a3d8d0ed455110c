"""``vae-serve score``: a dataset through the service's own graphs, equal row for row to what the
HTTP API answers for each image with the same seed and K, resumable, and skipping bad inputs."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from .conftest import ROOT


def images(n: int, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, 28, 28)) < 0.3).astype(np.float32)


def score(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "service", "score", *args, "--model-dir", str(ROOT / "models")]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def rows(out: Path) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(out.glob("part-*.parquet"))])


def test_every_row_equals_what_the_api_answers_for_that_image_seed_and_k(client, tmp_path):
    x = images(6, seed=4)
    np.save(tmp_path / "x.npy", x)
    done = score(str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"), "--what", "elbo,anomaly,latent",
                 "--samples", "8", "--anomaly-samples", "16", "--seed", "5", "--chunk-rows", "4")  # fmt: skip
    assert done.returncode == 0, done.stderr
    table = rows(tmp_path / "out")
    assert table.column("id").to_pylist() == [str(i) for i in range(6)]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["rows"] == 6 and summary["skipped"] == 0
    for i, image in enumerate(x):
        one = {"inputs": [image.tolist()], "seed": 5}
        elbo = client.post("/elbo", json={**one, "samples": 8}).json()
        anomaly = client.post("/anomaly", json={**one, "samples": 16}).json()
        encode = client.post("/encode", json={"inputs": [image.tolist()]}).json()
        for name in ("elbo", "reconstruction", "kl", "log_likelihood", "gap"):
            np.testing.assert_allclose(table.column(name)[i].as_py(), elbo[name][0], rtol=1e-5, atol=1e-4)
        for name in ("score", "percentile", "outlier"):
            np.testing.assert_allclose(table.column(name)[i].as_py(), anomaly[name][0], rtol=1e-5, atol=1e-4)
        np.testing.assert_allclose(table.column("mean")[i].as_py(), encode["mean"][0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(table.column("log_var")[i].as_py(), encode["log_var"][0], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_a_run_killed_midway_continues_where_it_was_and_writes_every_row_once(tmp_path):
    np.save(tmp_path / "x.npy", images(240, seed=1))
    args = [str(tmp_path / "x.npy"), "--what", "elbo", "--samples", "64", "--chunk-rows", "16", "--seed", "2"]
    clean = score(*args, "--out", str(tmp_path / "clean"))
    assert clean.returncode == 0, clean.stderr
    command = [sys.executable, "-m", "service", "score", *args, "--out", str(tmp_path / "resumed"),
               "--model-dir", str(ROOT / "models")]  # fmt: skip
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while len(list((tmp_path / "resumed").glob("part-*.parquet"))) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    first.send_signal(signal.SIGKILL)  # at any point: mid-chunk, mid-write
    first.wait()
    written = len(list((tmp_path / "resumed").glob("part-*.parquet")))
    assert 3 <= written < 15, "the first start was to be stopped midway"
    again = score(*args, "--out", str(tmp_path / "resumed"))
    assert again.returncode == 0, again.stderr
    resumed, whole = rows(tmp_path / "resumed"), rows(tmp_path / "clean")
    assert resumed.column("id").to_pylist() == [str(i) for i in range(240)]  # each row once, in order
    assert resumed.equals(whole)
    assert json.loads((tmp_path / "resumed" / "summary.json").read_text())["resumed_chunks"] >= written


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray((array * 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_bad_inputs_are_skipped_with_why_and_the_run_goes_on(tmp_path):
    folder = tmp_path / "images"
    (folder / "nested").mkdir(parents=True)
    good = images(3, seed=2)
    for i, image in enumerate(good):
        (folder / ("nested" if i else "") / f"good{i}.png").write_bytes(_png(image))
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    Image.new("L", (32, 32)).save(folder / "big.jpg")
    done = score(str(folder), "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    table = rows(tmp_path / "out")
    assert sorted(table.column("id").to_pylist()) == ["good0.png", "nested/good1.png", "nested/good2.png"]
    skipped = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert set(skipped) == {"broken.png", "big.jpg"}
    assert "not a readable image" in skipped["broken.png"] and "32×32" in skipped["big.jpg"]
    assert "3 rows scored, 2 skipped" in done.stderr


def test_parquet_with_an_image_column_is_read(tmp_path):
    x = images(5, seed=3)
    # a column holds one type: encoded images in one file, numbers in another
    pq.write_table(pa.table({"image": [_png(image) for image in x[:3]]}), tmp_path / "png.parquet")
    pq.write_table(pa.table({"pixels": [image.ravel().tolist() for image in x[3:]]}), tmp_path / "raw.parquet")
    assert score(str(tmp_path / "png.parquet"), "--out", str(tmp_path / "a")).returncode == 0
    raw = score(str(tmp_path / "raw.parquet"), "--out", str(tmp_path / "b"), "--column", "pixels")
    assert raw.returncode == 0, raw.stderr
    assert rows(tmp_path / "a").num_rows == 3 and rows(tmp_path / "b").num_rows == 2


@pytest.mark.slow
def test_a_wrong_model_or_option_stops_at_once_with_one_line(tmp_path):
    np.save(tmp_path / "x.npy", images(2))
    for args, expected in (
        (["--model", "no-such-model"], "no model 'no-such-model'"),
        (["--what", "elbo,nonsense"], "--what: nonsense"),
        (["--samples", "0"], "--samples must be ≥ 1"),
        (["--samples", "100000"], "samples"),
    ):
        done = score(str(tmp_path / "x.npy"), "--out", str(tmp_path / "out"), *args)
        assert done.returncode == 1 and "Traceback" not in done.stderr
        assert done.stderr.strip().startswith("vae-serve score:") and expected in done.stderr, done.stderr
    missing = score(str(tmp_path / "none.npy"), "--out", str(tmp_path / "out"))
    assert missing.returncode == 1 and "no such file or folder" in missing.stderr
