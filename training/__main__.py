"""The training CLI: ``python -m training {train,evaluate,report,export,fit} CONFIG [options]``.

CONFIG is a shipped name (``fashion-mnist``) or a path to a TOML file; ``--set section.key=value``
overrides any field. Checkpoints and logs go to ``runs/<name>/``, the served artifacts to
``models/<name>/``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path

from .config import Config, ConfigError, load_config
from .errors import DataError
from .export import ExportError

log = logging.getLogger("training")

COMMANDS = {
    "train": "train with early stopping; checkpoints in the run dir",
    "evaluate": "test-set ELBO, IWAE log p(x), gap and active units of the best checkpoint",
    "report": "PNG figures: curves, reconstructions, samples, traversals, latent map",
    "export": "ONNX graphs + parity check + manifest into models/<name>/",
    "fit": "train, evaluate, report and export in one go",
}
REEXPORT = "export a served model again from its own graphs (same weights and metrics, the current manifest layout)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("config", help="shipped config name (e.g. fashion-mnist) or path to a .toml file")
        sub.add_argument(
            "--set",
            dest="overrides",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config field, e.g. --set train.epochs=5 (repeatable)",
        )
        sub.add_argument("--epochs", type=int, help="shorthand for --set train.epochs=N")
        sub.add_argument("--seed", type=int, help="shorthand for --set train.seed=N")
        sub.add_argument("--device", help="cpu or cuda[:N] (shorthand for --set train.device=...)")
        sub.add_argument("--data-dir", help="folder with the four IDX files (default: Debian's dataset package)")
        sub.add_argument(
            "--data", help="your images: a folder of image files, or an .npy / .npz array (shorthand for data.path)"
        )
        sub.add_argument("--name", help="the model's name: runs/<name>/ and models/<name>/ (shorthand for name)")
        sub.add_argument("--runs-dir", type=Path, default=Path("runs"), help="checkpoints and logs (default: runs/)")
        sub.add_argument("--models-dir", type=Path, default=Path("models"), help="exported models (default: models/)")
        sub.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
        sub.add_argument(
            "--log-level",
            default="info",
            choices=["debug", "info", "warning"],
            help="debug also logs a fingerprint of the weights after every step, on every rank",
        )
        if name in ("train", "fit"):
            sub.add_argument("--resume", action="store_true", help="continue from the run dir's last checkpoint")
    sub = commands.add_parser("reexport", help=REEXPORT, description=REEXPORT)
    sub.add_argument(
        "model_dirs",
        nargs="+",
        type=Path,
        metavar="MODEL_DIR",
        help="a folder with manifest.json, e.g. models/fashion-mnist",
    )
    sub.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    return parser


def resolve_config(args: argparse.Namespace) -> Config:
    overrides = list(args.overrides)
    for flag, key in (
        ("data", "data.path"),
        ("name", "name"),
        ("epochs", "train.epochs"),
        ("seed", "train.seed"),
        ("device", "train.device"),
        ("data_dir", "data.data_dir"),
    ):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={json.dumps(value)}")
    return load_config(args.config, overrides)


def run(args: argparse.Namespace) -> None:
    if args.command == "reexport":
        from . import export

        for model_dir in args.model_dirs:
            export.reexport(model_dir)
        return
    cfg = resolve_config(args)
    run_dir = args.runs_dir / cfg.name
    model_dir = args.models_dir / cfg.name
    progress = not args.no_progress and sys.stderr.isatty()
    from . import distributed, train

    world = distributed.init(cfg.train.device)  # a rank of `torchrun --nproc_per_node N -m training ...`, or alone
    try:
        if args.command in ("train", "fit"):
            train.fit(
                cfg,
                run_dir,
                resume=args.resume,
                progress=progress and world.is_main,
                command=reproduce_command(sys.argv[1:]),
            )
        if not world.is_main:
            return  # evaluation, report and export are rank 0's: the ranks hold the same weights
        if args.command in ("evaluate", "fit"):
            _evaluate(cfg, run_dir, progress)
        if args.command in ("report", "fit"):
            from . import report

            report.write_report(run_dir, model_dir / "report")
        if args.command in ("export", "fit"):
            from . import export

            export.export_model(run_dir, model_dir)
    finally:
        distributed.finish()


def reproduce_command(argv: list[str]) -> str:
    """The one command that rebuilds this model: the same arguments, as ``fit``, minus run-only flags."""
    kept, skip = [], False
    for arg in argv[1:]:
        if skip or arg in ("--resume", "--no-progress") or arg.startswith("--log-level="):
            skip = False
            continue
        if arg == "--log-level":
            skip = True  # and its value
            continue
        kept.append(arg)
    return "python -m training fit " + " ".join(shlex.quote(a) for a in kept)


def _evaluate(cfg: Config, run_dir: Path, progress: bool) -> None:
    from . import train

    best = run_dir / "best.pt"
    if not best.is_file():
        raise FileNotFoundError(f"{best} not found: run `python -m training train {cfg.name}` first")
    trained_cfg, model, _ = train.load_checkpoint(best, cfg.train.device)
    # Evaluation settings come from the command line; the model's from its checkpoint.
    trained_cfg = Config.from_dict(
        {**trained_cfg.to_dict(), "eval": cfg.to_dict()["eval"], "train": cfg.to_dict()["train"]}
    )
    train.use_device(trained_cfg)
    splits = train.load_data(trained_cfg, run_dir, progress)
    metrics = train.evaluate(trained_cfg, model, splits, cfg.train.device, progress)
    metrics["dataset_sha256"] = splits.sha256
    (run_dir / "eval.json").write_text(json.dumps(metrics, indent=2))
    log.info(
        "test: ELBO %.2f, log p(x) %.2f (IWAE K=%d), gap %.2f, KL %.2f, active units %d/%d",
        metrics["test_elbo"],
        metrics["test_log_likelihood"],
        metrics["iwae_samples"],
        metrics["test_gap"],
        metrics["test_kl"],
        metrics["active_units"],
        metrics["latent_dim"],
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    rank = f"[rank {os.environ['RANK']}] " if int(os.environ.get("WORLD_SIZE", "1")) > 1 else ""
    logging.basicConfig(level=args.log_level.upper(), format=f"%(asctime)s {rank}%(levelname)s %(name)s: %(message)s")
    try:
        run(args)
    except (ConfigError, DataError, FileNotFoundError, ExportError) as exc:
        parser.exit(2, f"{parser.prog} {args.command}: error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
