"""The ``vae-serve score`` command line: its options, their checks, and the run it starts (local,
or on Ray with ``--ray-address``); the scoring itself is ``service.score``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import score
from .errors import ServiceError
from .schemas import AnomalyOptions, ElboOptions
from .settings import Settings


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vae-serve score", description=score.__doc__.splitlines()[0])
    p.add_argument("input", type=Path, help="a folder of images, an .npy, an .npz or a .parquet file")
    p.add_argument("--out", type=Path, required=True, help="a folder for the Parquet parts (kept to resume)")
    p.add_argument("--model", default=Settings.model_fields["default_model"].default or "fashion-mnist")
    p.add_argument("--model-dir", type=Path, default=Settings.model_fields["model_dir"].default)
    p.add_argument("--what", default="elbo", help=f"comma list of {', '.join(score.WHAT)} (default elbo)")
    p.add_argument("--samples", type=int, default=ElboOptions.model_fields["samples"].default,
                   help="K importance samples for elbo's log_likelihood (as /elbo)")  # fmt: skip
    p.add_argument("--anomaly-samples", type=int, default=AnomalyOptions.model_fields["samples"].default,
                   help="K for the anomaly score (as /anomaly)")  # fmt: skip
    p.add_argument("--threshold", type=float, default=AnomalyOptions.model_fields["threshold"].default)
    p.add_argument("--seed", type=int, default=0, help="the seed each image is scored with (as a request's)")
    p.add_argument("--column", default="image", help="the image column of a Parquet input (or an .npz array)")
    p.add_argument("--chunk-rows", type=int, default=4096, help="inputs per Parquet part: the unit of resuming")
    p.add_argument("--batch-rows", type=int, default=1024, help="graph rows per ONNX run")
    p.add_argument("--ray-address", help="run on this Ray cluster with Ray Data (host:port, or 'auto')")
    p.add_argument("--ray-actors", type=int, default=2, help="scoring actors on Ray, each with its own sessions")
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    args.what = [w.strip() for w in args.what.split(",") if w.strip()]
    wrong = [w for w in args.what if w not in score.WHAT]
    problems = [f"--what: {', '.join(wrong)} (choose from {', '.join(score.WHAT)})"] if wrong or not args.what else []
    counts = ("samples", "anomaly_samples", "chunk_rows", "batch_rows", "ray_actors")
    problems += [f"--{n.replace('_', '-')} must be ≥ 1" for n in counts if getattr(args, n) < 1]
    problems += [f"{args.input}: no such file or folder"] if not args.input.exists() else []
    problems += ["--seed must be ≥ 0"] if args.seed < 0 else []
    if problems:
        sys.exit(f"vae-serve score: {'; '.join(problems)}")
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        if args.ray_address:
            from .score_ray import run_on_ray  # Ray only where it is asked for

            summary = run_on_ray(args)
        else:
            summary = score.run(args)
    except (score.ScoreError, ServiceError) as exc:
        sys.exit(f"vae-serve score: {getattr(exc, 'message', exc)}")
    outliers = f", {summary['outliers']} outliers" if "anomaly" in args.what else ""
    skipped = f" (listed in {args.out / 'skipped.json'})" if summary["skipped"] else ""
    sys.stderr.write(f"{summary['rows']:,} rows scored, {summary['skipped']} skipped{skipped}{outliers}\n")
