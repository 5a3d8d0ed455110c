"""``vae-serve score``: a whole dataset scored offline, through the service's own runtime and rules.

Reads a folder of images (recursively, any format Pillow reads), an ``.npy`` (a block at a time) or
``.npz`` of images, or Parquet with an image column (encoded image bytes, or H·W·C numbers a
row), and writes Parquet
parts to ``--out``: each row's id and what was asked (``elbo`` and its terms with the IWAE
log-likelihood over K samples, the calibrated ``anomaly`` score, percentile and flag, the
``latent`` mean and log-variance). The graphs run in this process through ``ModelRuntime`` and its
batchers, in large batches; nothing of the scoring is written here twice.

Each image is scored as if it were its own request with ``--seed``: a row's numbers equal what
``/elbo``, ``/anomaly`` and ``/encode`` answer for that image, seed and K. The input is cut into
numbered chunks; a chunk's part (and the inputs it had to skip, with why) is written whole or not
at all, so a run stopped at any point and started again with the same command continues where it
was, and the output holds every row exactly once.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import arrays, rules
from .errors import ServiceError
from .manifest import ManifestError
from .metrics import Metrics
from .noise import Noise, draw
from .runtime import ModelRuntime, load_model, requested_providers
from .settings import Settings
from .workers import usable_cores

log = logging.getLogger("service.score")

WHAT = ("elbo", "anomaly", "latent")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
PART = "part-{:06d}.parquet"
SKIPPED = "part-{:06d}.skipped.json"


class ScoreError(Exception):
    """A wrong model, input or option: the run stops at once with this one line."""


@dataclass
class Chunk:
    index: int
    ids: list[str]  # one per input, scored or skipped
    images: list[np.ndarray | None]  # (H·W·C,) in [0, 1], or None where skipped
    skipped: dict[str, str]  # id -> why


# ---- reading ----------------------------------------------------------------------------------------


def image_files(folder: Path) -> list[Path]:
    """Every image under ``folder``, in a stable order (the chunks of a resumed run are the same)."""
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def decode_image(data: bytes | Path, shape: tuple[int, int, int]) -> np.ndarray:
    """An encoded image -> (H·W·C,) float32 in [0, 1], converted to the model's channels."""
    h, w, c = shape
    try:
        with Image.open(data if isinstance(data, Path) else io.BytesIO(data)) as image:
            if image.size != (w, h):
                raise ValueError(f"image is {image.size[0]}×{image.size[1]}; the model takes {w}×{h}")
            return np.asarray(arrays.to_mode(image, arrays.PNG_MODES[c]), np.float32).reshape(-1) / 255.0
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__})") from None


def checked_row(row: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """One image as numbers, by the service's own rules (shape, finite, in [0, 1])."""
    try:
        return arrays.images(np.asarray(row, np.float32)[None], shape, field="image")[0]
    except ServiceError as exc:
        raise ValueError(exc.message.removeprefix("image[0]: ")) from None


def npz_name(archive, column: str) -> str:
    """The array of an .npz that holds the images: ``column``, or else its first."""
    return column if column in archive.files else archive.files[0]


def read_inputs(source: Path, column: str, files: list[Path] | None = None) -> Iterator[tuple[str, object]]:
    """(id, an image's path/bytes/numbers) for every input, in a stable order; ``files``: a folder's
    images, when the caller has listed them already."""
    if source.is_dir():
        for path in image_files(source) if files is None else files:
            yield str(path.relative_to(source)), path
    elif source.suffix == ".npy":
        for i, row in enumerate(npy_rows(source)):
            yield str(i), row
    elif source.suffix == ".npz":
        with np.load(source) as archive:
            for i, row in enumerate(archive[npz_name(archive, column)]):
                yield str(i), row
    elif source.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.ParquetFile(source)
        if column not in table.schema_arrow.names:
            raise ScoreError(f"{source}: no column {column!r} (it has {', '.join(table.schema_arrow.names)})")
        i = 0
        for batch in table.iter_batches(columns=[column]):
            for value in batch.column(0).to_pylist():
                yield str(i), value
                i += 1
    else:
        raise ScoreError(f"{source}: expected a folder of images, an .npy, an .npz or a .parquet file")


def npy_header(file) -> tuple[tuple[int, ...], np.dtype]:
    """An .npy file's shape and dtype; the file is left at its first value."""
    version = np.lib.format.read_magic(file)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(file)
    if fortran or dtype.hasobject:
        raise ScoreError(f"{file.name}: a Fortran-ordered or object .npy; save it with np.save of a C-ordered array")
    return shape, dtype


def npy_rows(path: Path, block: int = 1024) -> Iterator[np.ndarray]:
    """An .npy's rows, read a block at a time (not memory-mapped: a large file's pages never pile up)."""
    with open(path, "rb") as file:
        shape, dtype = npy_header(file)
        row = int(np.prod(shape[1:], dtype=np.int64))
        for start in range(0, shape[0] if shape else 0, block):
            count = min(block, shape[0] - start)
            yield from np.fromfile(file, dtype, count * row).reshape(count, *shape[1:])


def as_image(item: object, shape: tuple[int, int, int]) -> np.ndarray:
    if isinstance(item, Path | bytes):
        return decode_image(item, shape)
    if item is None:
        raise ValueError("no image in this row")
    return checked_row(np.asarray(item), shape)


def chunks(source: Path, shape: tuple[int, int, int], column: str, size: int,
           files: list[Path] | None = None) -> Iterator[Chunk]:  # fmt: skip
    """The inputs in numbered chunks of ``size``; an input that cannot be read is kept as skipped."""
    chunk = Chunk(0, [], [], {})
    for ident, item in read_inputs(source, column, files):
        try:
            image = as_image(item, shape)
        except ValueError as exc:
            image, chunk.skipped[ident] = None, str(exc)
        chunk.ids.append(ident)
        chunk.images.append(image)
        if len(chunk.ids) == size:
            yield chunk
            chunk = Chunk(chunk.index + 1, [], [], {})
    if chunk.ids:
        yield chunk


# ---- scoring ----------------------------------------------------------------------------------------


def per_image_noise(seed: int, samples: int, rows: int, latent_dim: int) -> np.ndarray:
    """ε (K, B, Z) for B images each scored as its own request with ``seed``: the same draw for each."""
    one = draw([Noise.of(seed, (samples, 1, latent_dim), axis=1)])  # (K, 1, Z)
    return np.broadcast_to(one, (samples, rows, latent_dim))


async def score_chunk(runtime: ModelRuntime, x: np.ndarray, args) -> dict[str, np.ndarray]:
    """What was asked, per row of x (B, D), from the runtime's graphs."""
    z = runtime.latent_dim
    columns: dict[str, np.ndarray] = {}
    if "elbo" in args.what:
        out = await runtime.score(x, per_image_noise(args.seed, args.samples, len(x), z))
        columns.update({name: out[name] for name in ("elbo", "reconstruction", "kl", "log_likelihood", "gap")})
    if "anomaly" in args.what:
        eps = per_image_noise(args.seed, args.anomaly_samples, len(x), z)
        out = await runtime.anomaly(x, eps, args.threshold)
        columns.update({"score": out["score"], "percentile": out["percentile"], "outlier": out["outlier"]})
        columns.setdefault("log_likelihood", out["log_likelihood"])
    if "latent" in args.what:
        out = await runtime.encode(x, np.zeros((0, len(x), z), np.float32))
        columns.update({"mean": out["mean"], "log_var": out["log_var"]})
    return columns


def write_part(out: Path, chunk: Chunk, columns: dict[str, np.ndarray]) -> None:
    """The chunk's rows and its skipped inputs, each file written whole (a temporary name, then renamed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    kept = [i for i, image in enumerate(chunk.images) if image is not None]
    data = {"id": pa.array([chunk.ids[i] for i in kept], pa.string())}
    for name, values in columns.items():
        values = np.asarray(values)
        data[name] = pa.array(list(values)) if values.ndim == 2 else pa.array(values)
    table = pa.table(data)
    skipped = out / SKIPPED.format(chunk.index)
    _atomic(skipped, json.dumps(chunk.skipped, indent=0).encode())
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    _atomic(out / PART.format(chunk.index), buffer.getvalue())  # last: its presence marks the chunk done


def _atomic(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


class Progress:
    """One line on stderr, redrawn at most twice a second: rows, rows/s and the time left."""

    def __init__(self, total: int | None):
        self.total, self.done, self.started, self.shown = total, 0, time.perf_counter(), 0.0

    def add(self, rows: int) -> None:
        self.done += rows
        now = time.perf_counter()
        if now - self.shown >= 0.5 or (self.total is not None and self.done >= self.total):
            self.shown = now
            rate = self.done / max(now - self.started, 1e-9)
            left = "" if not self.total or not rate else f", {_duration((self.total - self.done) / rate)} left"
            total = f"/{self.total:,}" if self.total else ""
            sys.stderr.write(f"\rscored {self.done:,}{total} inputs, {rate:,.0f} rows/s{left}   ")
            sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def count_inputs(source: Path, column: str) -> int | None:
    """How many rows a file holds (None: a folder, whose listing is its count, or not a kind the scorer reads)."""
    if source.suffix == ".npy":
        with open(source, "rb") as file:
            return npy_header(file)[0][0]
    if source.suffix == ".npz":
        with np.load(source) as archive:
            return len(archive[npz_name(archive, column)])
    if source.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(source).metadata.num_rows
    return None


class Scorer:
    """The model's runtime on an event loop of its own: what the local run and each Ray actor score
    with. ``score(x)`` answers what was asked for images x (B, D)."""

    def __init__(self, args) -> None:
        settings = Settings(model_dir=args.model_dir, max_batch_rows=args.batch_rows, warmup=False)
        if settings.ort_intra_op_threads == 0:  # the cores shared among the runs in flight, not each run all
            threads = max(1, usable_cores() // settings.max_concurrent_runs)
            settings = settings.model_copy(update={"ort_intra_op_threads": threads})
        folder = settings.model_dir / args.model
        if not (folder / "manifest.json").is_file():
            found = sorted(p.parent.name for p in settings.model_dir.glob("*/manifest.json"))
            raise ScoreError(f"no model {args.model!r} in {settings.model_dir} (models: {', '.join(found) or 'none'})")
        rules.check_size(settings, 1, max(args.samples, args.anomaly_samples))  # the K limits a request has
        self.args, self.loop = args, asyncio.new_event_loop()
        self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ort")
        try:
            self.runtime = load_model(args.model, folder, None, requested_providers(settings), settings,
                                      Metrics(counts_model_events=False), self.executor)  # fmt: skip
        except (ManifestError, OSError) as exc:
            self.close()
            raise ScoreError(f"model {args.model!r}: {exc}") from None
        if "anomaly" in args.what and self.runtime.manifest.anomaly is None:
            self.close()
            raise ScoreError(f"model {args.model!r} has no anomaly calibration: score --what elbo,latent instead")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return self.runtime.image_shape

    def score(self, x: np.ndarray) -> dict[str, np.ndarray]:
        return self.loop.run_until_complete(score_chunk(self.runtime, x, self.args))

    def close(self) -> None:
        if getattr(self, "runtime", None) is not None:
            self.loop.run_until_complete(self.runtime.close())
        self.loop.close()
        self.executor.shutdown()


def run(args) -> dict:
    """The local run: chunk by chunk, each part written whole; parts already there are kept."""
    scorer = Scorer(args)
    args.out.mkdir(parents=True, exist_ok=True)
    resumed = 0
    files = image_files(args.input) if args.input.is_dir() else None  # listed once, for the count and the reading
    progress = Progress(len(files) if files is not None else count_inputs(args.input, args.column))
    try:
        for chunk in chunks(args.input, scorer.image_shape, args.column, args.chunk_rows, files):
            if (args.out / PART.format(chunk.index)).exists():  # done by an earlier start of this command
                resumed += 1
            else:
                kept = [image for image in chunk.images if image is not None]
                write_part(args.out, chunk, scorer.score(np.stack(kept)) if kept else {})
            progress.add(len(chunk.ids))
    finally:
        progress.close()
        scorer.close()
    return summarize(args.out, resumed)


def summarize(out: Path, resumed_chunks: int = 0) -> dict:
    """Rows, skipped inputs (with why) and outliers over every part written."""
    import pyarrow.parquet as pq

    rows = outliers = 0
    skipped: dict[str, str] = {}
    for part in sorted(out.glob("part-*.parquet")):
        table = pq.read_table(part)
        rows += table.num_rows
        if "outlier" in table.column_names:
            outliers += sum(table.column("outlier").to_pylist())
        skipped.update(json.loads((out / part.name.replace(".parquet", ".skipped.json")).read_text()))
    summary = {"rows": rows, "skipped": len(skipped), "outliers": outliers, "resumed_chunks": resumed_chunks}
    (out / "skipped.json").write_text(json.dumps(skipped, indent=1))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
