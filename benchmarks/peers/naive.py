"""Peer (b), the "naive" baseline: FastAPI calling onnxruntime once per request, orjson out.

What most teams write first, kept lean: ``async def`` endpoints that run ORT inline (no thread
pool hop), one run per request, no batching, on the same ONNX files; orjson straight from numpy (the same
bytes as vae-serve's answers, so the baseline is not handicapped by ``.tolist()``). Request and response shapes follow
vae-serve's, so one wrk script drives both. Usage: ``python -m benchmarks.peers.naive PORT``.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import onnxruntime as ort
import orjson
import uvicorn
from fastapi import Body, FastAPI
from fastapi.responses import Response
from pydantic import BaseModel

MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "fashion-mnist"
NpyBody = Annotated[bytes, Body(media_type="application/x-npy")]


class SampleRequest(BaseModel):
    n: int = 1
    seed: int | None = None


def npy(array: np.ndarray) -> Response:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return Response(buffer.getvalue(), media_type="application/x-npy")


def create_app(model_dir: Path = MODEL_DIR) -> FastAPI:
    manifest = json.loads((model_dir / "manifest.json").read_text())
    sessions = {
        g: ort.InferenceSession(str(model_dir / manifest["graphs"][g]["path"]), providers=["CPUExecutionProvider"])
        for g in ("encoder", "decoder", "score")
    }
    latent_dim = manifest["latent_dim"]
    app = FastAPI()

    @app.post("/sample")
    async def sample(request: SampleRequest):
        rng = np.random.default_rng(request.seed)
        z = rng.standard_normal((request.n, latent_dim), dtype=np.float32)
        (image,) = sessions["decoder"].run(["image"], {"z": z})
        body = {"model": "fashion-mnist", "latents": z, "images": image.reshape(-1, 28, 28)}
        return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")

    @app.post("/decode")
    async def decode(body: NpyBody):
        z = np.load(io.BytesIO(body)).astype(np.float32)
        (image,) = sessions["decoder"].run(["image"], {"z": z})
        return npy(image.reshape(-1, 28, 28))

    @app.post("/encode")
    async def encode(body: NpyBody):
        x = np.load(io.BytesIO(body)).astype(np.float32).reshape(-1, 784)
        mean, _ = sessions["encoder"].run(["mean", "log_var"], {"x": x})
        return npy(mean)

    @app.post("/elbo")
    async def elbo(body: NpyBody, samples: int = 1, seed: int | None = None):
        x = np.load(io.BytesIO(body)).astype(np.float32).reshape(-1, 784)
        eps = np.random.default_rng(seed).standard_normal((samples, len(x), latent_dim), dtype=np.float32)
        (log_likelihood,) = sessions["score"].run(["log_likelihood"], {"x": x, "eps": eps})
        return npy(log_likelihood)

    @app.get("/health/ready")
    async def ready():
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
