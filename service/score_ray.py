"""``vae-serve score --ray-address``: the same scoring on a Ray cluster, with Ray Data.

The driver lists the inputs (each image file's path, or each row's index in an ``.npy``, ``.npz``
or Parquet file), Ray Data cuts
the list into blocks, and ``map_batches`` sends them to a pool of actors, each holding a
``score.Scorer`` (the model's ONNX sessions and batchers): an actor reads its images itself from
the shared path, skips what cannot be read with the same rules as the local run, and scores the
rest with the same graphs, seed and K, so every row equals the local run's. The scored rows go to
Parquet with ``write_parquet``; the skipped ones, with why, to ``skipped.json``. The files must be
on a path every node sees (a shared or object-store mount, as on KubeRay). A Ray run is done
whole: resuming is the local run's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from .score import ScoreError, Scorer, as_image, count_inputs, image_files, npz_name

SKIPPED, NODE = "skipped", "node"  # columns the actors add: why a row was skipped, and where it ran


def references(source: Path, column: str) -> list[dict]:
    """What each input is, cheaply, for the actors to read: a file's path, or a row's index."""
    if source.is_dir():
        return [{"id": str(path.relative_to(source)), "path": str(path)} for path in image_files(source)]
    rows = count_inputs(source, column)
    if rows is None:
        raise ScoreError(f"{source}: expected a folder of images, an .npy, an .npz or a .parquet file")
    return [{"id": str(i), "row": i} for i in range(rows)]


class Rows:
    """An actor's reader of rows by index: an .npy memory-mapped, an .npz's array, a Parquet column
    read by the row groups a batch falls in."""

    def __init__(self, source: Path, column: str) -> None:
        self.source, self.column = source, column
        if source.suffix == ".npy":
            self.array = np.load(source, mmap_mode="r")
        elif source.suffix == ".npz":
            with np.load(source) as archive:
                self.array = archive[npz_name(archive, column)]
        else:
            import pyarrow.parquet as pq

            self.parquet = pq.ParquetFile(source)
            sizes = [self.parquet.metadata.row_group(g).num_rows for g in range(self.parquet.num_row_groups)]
            self.starts = np.cumsum([0, *sizes])

    def take(self, indices: np.ndarray) -> list:
        if self.source.suffix in (".npy", ".npz"):
            return [self.array[int(i)] for i in indices]
        first, last = (int(np.searchsorted(self.starts, i, side="right")) - 1 for i in (indices.min(), indices.max()))
        groups = list(range(first, last + 1))
        values = self.parquet.read_row_groups(groups, columns=[self.column]).column(0).to_pylist()
        return [values[int(i) - int(self.starts[first])] for i in indices]


class RayScorer:
    """One actor of the pool: a ``Scorer`` and the inputs it reads by reference."""

    def __init__(self, options: dict) -> None:
        import ray

        self.args = argparse.Namespace(**options)
        self.scorer = Scorer(self.args)
        self.node = ray.get_runtime_context().get_node_id()
        self.rows = None if self.args.input.is_dir() else Rows(self.args.input, self.args.column)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        images, reasons = [], []
        items = [Path(p) for p in batch["path"]] if "path" in batch else self.rows.take(batch["row"])
        for item in items:
            try:
                images.append(as_image(item, self.scorer.image_shape))
                reasons.append("")
            except ValueError as exc:
                images.append(None)
                reasons.append(str(exc))
        kept = [i for i, image in enumerate(images) if image is not None]
        scored = self.scorer.score(np.stack([images[i] for i in kept])) if kept else {}
        out = {"id": np.asarray(batch["id"]), SKIPPED: np.asarray(reasons), NODE: np.full(len(images), self.node)}
        for name, values in scored.items():  # skipped rows hold NaN (False for a flag): they are not written
            full = np.zeros((len(images), *values.shape[1:]), values.dtype)
            if values.dtype.kind == "f":
                full[:] = np.nan
            full[kept] = values
            out[name] = full
        return out


def run_on_ray(args) -> dict:
    import ray

    if args.out.exists() and any(args.out.iterdir()):
        raise ScoreError(f"{args.out} is not empty: a Ray run writes a new folder whole (resume with the local run)")
    options = {**vars(args), "input": args.input.resolve(), "model_dir": args.model_dir.resolve()}
    Scorer(argparse.Namespace(**options)).close()  # a wrong model or option stops here, before the cluster
    ray.init(address=args.ray_address, log_to_driver=False, configure_logging=False)
    try:
        refs = references(options["input"], args.column)
        blocks = max(1, -(-len(refs) // args.chunk_rows))
        scored = (
            ray.data.from_items(refs, override_num_blocks=blocks)
            .map_batches(
                RayScorer,
                fn_constructor_kwargs={"options": options},
                compute=ray.data.ActorPoolStrategy(size=args.ray_actors),
                batch_size=args.chunk_rows,
                num_cpus=1,
            )
            .materialize()
        )
        skipped = {r["id"]: r[SKIPPED] for r in scored.filter(lambda r: r[SKIPPED] != "").take_all()}
        nodes = sorted(scored.unique(NODE))
        rows = scored.filter(lambda r: r[SKIPPED] == "").drop_columns([SKIPPED, NODE])
        rows.write_parquet(str(args.out))
        count = rows.count()
        outliers = int(rows.sum("outlier")) if "outlier" in rows.columns() and count else 0
    finally:
        ray.shutdown()
    summary = {"rows": count, "skipped": len(skipped), "outliers": outliers, "nodes": nodes}
    (args.out / "skipped.json").write_text(json.dumps(skipped, indent=1))
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary
