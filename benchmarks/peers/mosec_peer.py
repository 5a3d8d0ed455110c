"""Peer: mosec (a Rust HTTP front, Python workers, dynamic batching) serving the same decoder.

``/sample`` as vae-serve answers it (the same JSON keys and byte count, orjson from numpy), one ORT
run per batch that mosec's front collects. Usage: ``python -m benchmarks.peers.mosec_peer PORT
WORKERS WAIT_MS``; readiness is mosec's ``GET /``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
from mosec import Server, Worker

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "fashion-mnist"
MAX_BATCH = 64


class Sample(Worker):
    """A batch of ``{"n", "seed"?}`` requests: their latents in one decoder run, split back per request."""

    def __init__(self):
        super().__init__()
        manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
        self.latent_dim = manifest["latent_dim"]
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.session = ort.InferenceSession(
            str(MODEL_DIR / manifest["graphs"]["decoder"]["path"]), options, providers=["CPUExecutionProvider"]
        )
        self.seeds = np.random.default_rng()

    def deserialize(self, data: bytes) -> dict:
        return orjson.loads(data)

    def forward(self, data: list[dict]) -> list[dict]:
        seeds = [r.get("seed") if r.get("seed") is not None else int(self.seeds.integers(2**31)) for r in data]
        latents = [np.random.default_rng(s).standard_normal((r.get("n", 1), self.latent_dim), dtype=np.float32)
                   for s, r in zip(seeds, data)]  # fmt: skip
        (images,) = self.session.run(["image"], {"z": np.concatenate(latents)})
        answers, start = [], 0
        for seed, z in zip(seeds, latents):
            chunk = images[start : start + len(z)].reshape(-1, 28, 28)
            answers.append({"model": "fashion-mnist", "seed": seed, "latents": z, "images": chunk})
            start += len(z)
        return answers

    def serialize(self, data: dict) -> bytes:
        return orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY)


def main() -> None:
    port, workers, wait_ms = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    sys.argv = [sys.argv[0], "--port", port, "--address", "127.0.0.1", "--log-level", "warning"]
    server = Server()
    server.append_worker(Sample, num=workers, max_batch_size=MAX_BATCH, max_wait_time=wait_ms, route="/sample")
    server.run()


if __name__ == "__main__":
    main()
