"""``python -m benchmarks.recipe``: what each part of the training recipe buys, and what it costs to serve.

``ablate`` trains each arm on the same short schedule from one served model's weights
(``train.init_from``), in its own run folder (``--resume``d when it is there), and scores the last
checkpoint's raw weights and their moving average on the first N test images (IWAE, K draws). The
two arms, the ELBO (K = 1) and L_5, keep the average both, so each run gives two rows.
``serving-cost`` times two models' decoder graphs at one batch size in one run, interleaved.
Both write JSON and a markdown table under ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from .live import ROOT

log = logging.getLogger("benchmarks.recipe")
RESULTS = ROOT / "benchmarks" / "results"
ARMS = {"elbo": ["train.iwae_samples=1"], "iwae5": ["train.iwae_samples=5"]}
ARM_NAMES = {"elbo": "ELBO (K = 1)", "iwae5": "L_5 (K = 5)"}


def schedule(init_from: str, epochs: int, threads: int) -> list[str]:
    """The short schedule every arm shares: from the served weights, cosine 3e-4 -> 1e-5, no warm-up."""
    return [f"train.init_from={init_from}", f"train.epochs={epochs}", "train.lr=3e-4", "train.lr_min=1e-5",
            "train.kl_warmup_epochs=0", "train.ema_decay=0.999", f"train.patience={epochs}",
            f"train.threads={threads}"]  # fmt: skip


def train_arm(config: str, runs_dir: Path, overrides: list[str]) -> None:
    """One arm as the CLI runs it; a stopped arm continues where it was."""
    sets = [a for o in overrides for a in ("--set", o)]
    command = [sys.executable, "-m", "training", "train", config, "--runs-dir", str(runs_dir), "--no-progress"]
    subprocess.run([*command, "--resume", *sets], cwd=ROOT, check=True)


def score(model, cfg, splits, samples: int) -> dict:
    """Test NLL, ELBO and gap of ``model`` with ``samples`` IWAE draws: the evaluation's own pass,
    over the test images ``splits`` holds."""
    from training import train

    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, iwae_samples=samples))
    metrics = train.evaluate(cfg, model, splits, progress=False)
    return {k: round(metrics[k], 3) for k in ("test_nll", "test_elbo", "test_gap")}


def ablate(args: argparse.Namespace) -> dict:
    import torch

    from training import served, train
    from training.model import VAE

    torch.set_num_threads(args.threads)
    cfg, start, _ = served.load_served_model(args.init_from)
    splits = train.load_data(cfg)
    splits = dataclasses.replace(splits, test=splits.test[: args.test_images])
    rows = [{"arm": "start", "weights": "served", "epochs": 0, "train_seconds": 0.0,
             **score(start, cfg, splits, args.samples)}]  # fmt: skip
    for arm, overrides in ARMS.items():
        run_dir = args.runs_dir / arm
        train_arm(args.config, run_dir, schedule(str(args.init_from), args.epochs, args.threads) + overrides)
        run = run_dir / cfg.name
        epochs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        run_cfg, averaged, ckpt = train.load_checkpoint(run / "last.pt")
        raw = VAE(run_cfg.model)
        raw.load_state_dict(ckpt["model"])
        for weights, model in (("raw", raw.eval()), ("EMA", averaged)):
            rows.append({"arm": arm, "weights": weights, "epochs": len(epochs),
                         "train_seconds": round(sum(e["seconds"] for e in epochs), 1),
                         **score(model, cfg, splits, args.samples)})  # fmt: skip
            log.info("%s", rows[-1])
    result = {"init_from": str(args.init_from), "epochs": args.epochs, "iwae_samples": args.samples,
              "test_images": len(splits.test), "threads": args.threads, "rows": rows}  # fmt: skip
    _write("recipe-ablation", result, ablation_table(result))
    return result


def ablation_table(result: dict) -> str:
    start = result["rows"][0]["test_nll"]
    lines = [
        f"| training from the served weights, {result['epochs']} epochs | weights | test NLL, nats "
        f"(IWAE K = {result['iwae_samples']}, first {result['test_images']:,} test images) | vs start | "
        "test ELBO | gap | training time |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        name = "none (the starting model)" if row["arm"] == "start" else ARM_NAMES[row["arm"]]
        minutes = f"{row['train_seconds'] / 60:.1f} min" if row["train_seconds"] else "–"
        lines.append(f"| {name} | {row['weights']} | {row['test_nll']:.2f} | {row['test_nll'] - start:+.2f} | "
                     f"{row['test_elbo']:.2f} | {row['test_gap']:.2f} | {minutes} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def decoder_rows_per_second(model_dirs: list[Path], batch: int, rounds: int, seconds: float) -> dict[str, float]:
    """Each model's decoder.onnx on the CPU at ``batch`` rows, timed in alternating rounds so both
    see the same machine; the best round's rows/s of each, by the model's name and test NLL."""
    import onnxruntime as ort

    sessions, best = {}, {}
    for model_dir in model_dirs:
        manifest = json.loads((model_dir / "manifest.json").read_text())
        label = f"`{manifest['name']}`, test NLL {manifest['metrics']['test_nll']:.2f}"
        session = ort.InferenceSession(str(model_dir / "decoder.onnx"), providers=["CPUExecutionProvider"])
        z = np.random.default_rng(0).standard_normal((batch, manifest["latent_dim"]), dtype=np.float32)
        sessions[label], best[label] = (session, {"z": z}), 0.0
    for _ in range(rounds):
        for name, (session, feed) in sessions.items():
            session.run(None, feed)  # warm
            runs, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                session.run(None, feed)
                runs += 1
            best[name] = max(best[name], runs * batch / (time.perf_counter() - started))
    return best


def serving_cost(args: argparse.Namespace) -> dict:
    rates = decoder_rows_per_second(args.model_dirs, args.batch, args.rounds, args.seconds)
    baseline = next(iter(rates.values()))
    ratios = {k: v / baseline for k, v in rates.items()}
    result = {"batch": args.batch, "rows_per_second": rates, "ratio_to_first": ratios}
    lines = [f"| decoder.onnx | rows/s at batch {args.batch} (CPU) | vs first |", "|---|---|---|"]
    lines += [f"| {k} | {v:,.0f} | {v / baseline:.2f}× |" for k, v in rates.items()]
    _write("recipe-serving-cost", result, "\n".join(lines) + "\n")
    return result


def _write(stem: str, result: dict, table: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{stem}.md").write_text(table)
    log.info("wrote %s\n%s", RESULTS / f"{stem}.md", table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.recipe", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    sub = commands.add_parser("ablate", help="each arm on the same short schedule, raw and averaged weights scored")
    sub.add_argument("--config", default="fashion-mnist")
    sub.add_argument("--init-from", type=Path, default=ROOT / "models" / "fashion-mnist")
    sub.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "ablation")
    sub.add_argument("--epochs", type=int, default=3)
    sub.add_argument("--samples", type=int, default=100, help="IWAE draws per test image")
    sub.add_argument("--test-images", type=int, default=2000, help="the first N test images are scored")
    sub.add_argument("--threads", type=int, default=1, help="torch threads (leave a core to a long run beside)")
    sub = commands.add_parser("serving-cost", help="decoder throughput of two models side by side")
    sub.add_argument("model_dirs", type=Path, nargs="+")
    sub.add_argument("--batch", type=int, default=256)
    sub.add_argument("--rounds", type=int, default=5)
    sub.add_argument("--seconds", type=float, default=2.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    {"ablate": ablate, "serving-cost": serving_cost}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
