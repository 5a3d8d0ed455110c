"""``python -m benchmarks.score``: offline scoring of a dataset, three ways, in one run.

The same images (binarized noise of the model's shape, ``--rows`` of them, in an ``.npy``) scored
for ``elbo`` with K = 1: the score graph alone in this process at its best batch size (the
compute floor), ``vae-serve score`` (the whole command, start to summary), the same on a local
Ray it starts itself (``--ray-address local``, two actors), and the HTTP client
(``vae_client``, NPY, one image a request and batches of the server's request limit) against
vae-serve with its defaults.
Writes ``results/score.json`` and ``results/score.md``.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .live import ROOT
from .load import Peer, Server, python_command

log = logging.getLogger("benchmarks.score")


def inprocess(model_dir: Path, x: np.ndarray, batches=(64, 256, 1024, 4096), seconds: float = 3.0) -> dict:
    """The score graph alone: rows/s at each batch size (ORT's default threads)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    session = ort.InferenceSession(
        str(model_dir / manifest["graphs"]["score"]["path"]), providers=["CPUExecutionProvider"]
    )
    rates = {}
    for batch in batches:
        feeds = {"x": x[:batch], "eps": np.zeros((1, batch, manifest["latent_dim"]), np.float32)}
        session.run(None, feeds)
        runs, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            session.run(None, feeds)
            runs += 1
        rates[batch] = runs * batch / elapsed
    return rates


def local(path: Path, out: Path, model: str, *options: str) -> float:
    started = time.perf_counter()
    command = [*python_command("service"), "score", str(path), "--out", str(out), "--model", model, "--what", "elbo"]
    subprocess.run([*command, *options], check=True, cwd=ROOT, capture_output=True, timeout=3600)
    return time.perf_counter() - started


def over_http(x: np.ndarray, model: str, log_dir: Path, batches: tuple[int, ...]) -> dict[int, float]:
    """Rows/s of the HTTP client sending ``batch`` images a request, one request after another."""
    from vae_client import Client

    peer = Peer("vae-serve", python_command("service"), {"VAE_DEFAULT_MODEL": model})
    rates = {}
    with Server(peer, log_dir) as server, Client(server.url, timeout=300) as client:
        for batch in batches:
            images = x[: len(x) if batch > 64 else 2_000].reshape(-1, 28, 28)  # one at a time: a sample is enough
            client.elbo(images[:batch], seed=0)  # warm-up
            started = time.perf_counter()
            for start in range(0, len(images), batch):
                client.elbo(images[start : start + batch], seed=0)
            rates[batch] = len(images) / (time.perf_counter() - started)
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.score", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=60_000)
    parser.add_argument("--model", default="fashion-mnist")
    parser.add_argument("--http-batch", type=int, default=1024, help="images per HTTP request (the server's limit)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    x = (np.random.default_rng(0).random((args.rows, 784)) < 0.3).astype(np.float32)
    results: dict = {"rows": args.rows, "model": args.model}
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.npy"
        np.save(path, x.reshape(-1, 28, 28))
        results["inprocess_rows_per_s"] = inprocess(ROOT / "models" / args.model, x)
        log.info("in-process score graph: %s", {k: round(v) for k, v in results["inprocess_rows_per_s"].items()})
        results["local_s"] = local(path, Path(folder) / "out", args.model)
        log.info("vae-serve score: %.1f s", results["local_s"])
        results["ray_s"] = local(path, Path(folder) / "ray", args.model, "--ray-address", "local", "--ray-actors", "2")
        log.info("vae-serve score on Ray (a local Ray of this machine, two actors): %.1f s", results["ray_s"])
        results["http_rows_per_s"] = over_http(x, args.model, Path(folder), (1, args.http_batch))
        log.info("HTTP client: %s", {k: round(v) for k, v in results["http_rows_per_s"].items()})
    best = max(results["inprocess_rows_per_s"].values())
    local_rate, ray_rate = args.rows / results["local_s"], args.rows / results["ray_s"]
    results.update(local_rows_per_s=local_rate, ray_rows_per_s=ray_rate, best_inprocess_rows_per_s=best)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "score.json").write_text(json.dumps(results, indent=1))
    lines = [
        f"# Offline scoring: {args.rows:,} images, elbo with K = 1, model `{args.model}`", "",
        "| path | rows/s | ÷ in-process best |", "|---|---|---|",
        *(f"| score graph in process, batch {b} | {r:,.0f} | {r / best:.2f}× |"
          for b, r in results["inprocess_rows_per_s"].items()),
        f"| `vae-serve score` (whole command, start to summary) | {local_rate:,.0f} | {local_rate / best:.2f}× |",
        f"| `vae-serve score --ray-address local` (Ray started by it, two actors) | {ray_rate:,.0f} "
        f"| {ray_rate / best:.2f}× |",
        *(f"| HTTP client (`vae_client`, NPY), {b} image{'s' if b > 1 else ''} a request | {r:,.0f} | {r / best:.2f}× |"
          for b, r in results["http_rows_per_s"].items()),
        "", f"On Ray ÷ the local run: {ray_rate / local_rate:.2f}×",
        *(f"`vae-serve score` ÷ the HTTP client at {b} a request: {local_rate / r:.2f}×"
              for b, r in results["http_rows_per_s"].items()),
    ]  # fmt: skip
    (args.out / "score.md").write_text("\n".join(lines) + "\n")
    sys.stdout.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
