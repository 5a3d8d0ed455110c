"""Peer (d): LitServe serving the same ONNX files with its batching on.

One ``LitAPI`` per endpoint, as LitServe's docs build multi-endpoint servers; ``max_batch_size``
64 and a 5 ms ``batch_timeout`` (LitServe collects a batch until it is full or the timeout
passes). LitServe reads JSON bodies only, so every scenario reaches it as JSON.
Usage: ``python -m benchmarks.peers.lit PORT``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import litserve as ls
import numpy as np
import onnxruntime as ort

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "fashion-mnist"
MAX_BATCH_SIZE, BATCH_TIMEOUT_S = 64, 0.005


class OnnxAPI(ls.LitAPI):
    """Requests carry different row counts: batch() keeps the list, predict() runs them as one array."""

    graph = "decoder"

    def setup(self, device):
        manifest = json.loads((MODEL_DIR / "manifest.json").read_text())
        self.session = ort.InferenceSession(
            str(MODEL_DIR / manifest["graphs"][self.graph]["path"]), providers=["CPUExecutionProvider"]
        )
        self.latent_dim = manifest["latent_dim"]

    def batch(self, inputs):
        return inputs

    def unbatch(self, output):
        return output

    def run_rows(self, feeds: list[dict[str, np.ndarray]], output: str, axes: dict[str, int]) -> list[np.ndarray]:
        sizes = [next(iter(f.values())).shape[axes[next(iter(f))]] for f in feeds]
        joined = {name: np.concatenate([f[name] for f in feeds], axis=axes[name]) for name in feeds[0]}
        (result,) = self.session.run([output], joined)
        return np.split(result, np.cumsum(sizes)[:-1])


class SampleAPI(OnnxAPI):
    def decode_request(self, request):
        return {
            "z": np.random.default_rng().standard_normal((int(request.get("n", 1)), self.latent_dim), dtype=np.float32)
        }

    def predict(self, feeds):
        images = self.run_rows(feeds, "image", {"z": 0})
        return [{"latents": f["z"], "images": i} for f, i in zip(feeds, images)]

    def encode_response(self, output):
        return {
            "model": "fashion-mnist",
            "latents": output["latents"].tolist(),
            "images": output["images"].reshape(-1, 28, 28).tolist(),
        }


class DecodeAPI(OnnxAPI):
    def decode_request(self, request):
        return {"z": np.asarray(request["latents"], dtype=np.float32)}

    def predict(self, feeds):
        return self.run_rows(feeds, "image", {"z": 0})

    def encode_response(self, output):
        return {"model": "fashion-mnist", "images": output.reshape(-1, 28, 28).tolist()}


class EncodeAPI(OnnxAPI):
    graph = "encoder"

    def decode_request(self, request):
        return {"x": np.asarray(request["inputs"], dtype=np.float32).reshape(-1, 784)}

    def predict(self, feeds):
        return self.run_rows(feeds, "mean", {"x": 0})

    def encode_response(self, output):
        return {"model": "fashion-mnist", "mean": output.tolist()}


class ElboAPI(OnnxAPI):
    graph = "score"

    def decode_request(self, request):
        x = np.asarray(request["inputs"], dtype=np.float32).reshape(-1, 784)
        eps = np.random.default_rng(request.get("seed")).standard_normal(
            (int(request.get("samples", 1)), len(x), self.latent_dim), dtype=np.float32
        )
        return {"x": x, "eps": eps}

    def predict(self, feeds):
        by_k: dict[int, list[int]] = {}  # only requests with the same K share a run
        for i, f in enumerate(feeds):
            by_k.setdefault(f["eps"].shape[0], []).append(i)
        results: list = [None] * len(feeds)
        for indices in by_k.values():
            for i, r in zip(indices, self.run_rows([feeds[i] for i in indices], "log_likelihood", {"x": 0, "eps": 1})):
                results[i] = r
        return results

    def encode_response(self, output):
        return {"model": "fashion-mnist", "log_likelihood": output.tolist()}


def main(port: int) -> None:
    apis = [
        cls(max_batch_size=MAX_BATCH_SIZE, batch_timeout=BATCH_TIMEOUT_S, api_path=path)
        for cls, path in ((SampleAPI, "/sample"), (DecodeAPI, "/decode"), (EncodeAPI, "/encode"), (ElboAPI, "/elbo"))
    ]
    server = ls.LitServer(apis, accelerator="cpu", workers_per_device=1, healthcheck_path="/health/ready")
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")


if __name__ == "__main__":
    main(int(sys.argv[1]))
