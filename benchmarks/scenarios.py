"""The load scenarios and the compute floor (peer e: onnxruntime in this process, no HTTP).

Each scenario is one request shape, sent as NPY where it says so (to peers that read NPY) and
as JSON otherwise; ``rows`` is what a request asks the model for (images or latents), so
throughput compares as rows/s across peers and against the in-process floor.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

JSON, NPY = "application/json", "application/x-npy"


@dataclass(frozen=True)
class Scenario:
    name: str
    path: str  # with its query string
    rows: int  # images or latents per request
    graph: str  # the ONNX graph it runs
    body: dict  # JSON form; the array field also goes as NPY where binary is True
    array_field: str | None = None
    binary: bool = False  # NPY in and out (for peers that read NPY)
    samples: int = 0  # K importance samples (/elbo)
    protocol: str = "rest"  # rest: vae-serve's own routes; oip: the Open Inference Protocol

    def request(self, npy_ok: bool) -> tuple[bytes, str, str, str]:
        """(body, content type, accept, path) as this scenario reaches a peer."""
        if self.binary and npy_ok:
            buffer = io.BytesIO()
            np.save(buffer, np.asarray(self.body[self.array_field], dtype=np.float32))
            options = "&".join(f"{k}={v}" for k, v in self.body.items() if k != self.array_field)
            return buffer.getvalue(), NPY, NPY, self.path + (f"?{options}" if options else "")
        return json.dumps(self.body).encode(), JSON, JSON, self.path


def _images(n: int) -> list:
    return (np.random.default_rng(0).random((n, 784)) < 0.3).astype(np.float32).tolist()


def scenarios(latent_dim: int) -> list[Scenario]:
    latents = np.random.default_rng(1).standard_normal((256, latent_dim), dtype=np.float32).round(4).tolist()
    return [
        Scenario("sample n=1", "/sample", 1, "decoder", {"n": 1}),
        Scenario("sample n=64", "/sample", 64, "decoder", {"n": 64}),
        oip_decoder_scenario(latents[:1]),
        Scenario("decode 256", "/decode", 256, "decoder", {"latents": latents}, "latents", binary=True),
        Scenario("encode 64", "/encode", 64, "encoder", {"inputs": _images(64)}, "inputs", binary=True),
        Scenario(
            "elbo 64, K=16",
            "/elbo",
            64,
            "score",
            {"inputs": _images(64), "samples": 16, "seed": 0},
            "inputs",
            binary=True,
            samples=16,
        ),
    ]


def oip_decoder_scenario(latents: list) -> Scenario:
    """OIP infer on the decoder, JSON tensors in and the image out, as a tritonclient.http user sends it."""
    body = {
        "inputs": [{"name": "z", "shape": [len(latents), len(latents[0])], "datatype": "FP32", "data": latents}],
        "outputs": [{"name": "image"}],
    }
    return Scenario(f"oip decoder n={len(latents)}", "/v2/models/fashion-mnist-decoder/infer", len(latents),
                    "decoder", body, protocol="oip")  # fmt: skip


def burst_scenario() -> Scenario:
    """The deadline burst: /elbo of 8 images × K=256 in JSON, 2,048 score-graph rows a request."""
    return Scenario("elbo 8, K=256", "/elbo", 8, "score", {"inputs": _images(8), "samples": 256, "seed": 0}, "inputs",
                    samples=256)  # fmt: skip


def inprocess_rows_per_second(model_dir: Path, scenario: Scenario, seconds: float = 2.0, threads: int = 0) -> float:
    """Peer (e): the graph alone at the scenario's batch size, ORT's default threads (the compute floor)."""
    manifest = json.loads((model_dir / "manifest.json").read_text())
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(
        str(model_dir / manifest["graphs"][scenario.graph]["path"]), options, providers=["CPUExecutionProvider"]
    )
    rng = np.random.default_rng(0)
    rows, z_dim = scenario.rows, manifest["latent_dim"]
    feeds = {
        "decoder": lambda: {"z": rng.standard_normal((rows, z_dim), dtype=np.float32)},
        "encoder": lambda: {"x": rng.random((rows, 784), dtype=np.float32)},
        "score": lambda: {
            "x": rng.random((rows, 784), dtype=np.float32),
            "eps": rng.standard_normal((scenario.samples, rows, z_dim), dtype=np.float32),
        },
    }[scenario.graph]()
    session.run(None, feeds)
    runs, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds:
        session.run(None, feeds)
        runs += 1
    return runs * rows / elapsed
