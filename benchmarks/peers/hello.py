"""Peer (c), the HTTP floor: FastAPI answering /sample with a constant body of a real answer's size.

No model and no work: what uvicorn + FastAPI + orjson-sized bytes cost on this machine is the
ceiling any endpoint here can reach. Usage: ``python -m benchmarks.peers.hello PORT``.
"""

from __future__ import annotations

import sys

import numpy as np
import orjson
import uvicorn
from fastapi import FastAPI
from fastapi.responses import Response


def sample_answer() -> bytes:
    """A constant of the same shape as vae-serve's /sample n=1 answer, float32 values: the same byte count."""
    rng = np.random.default_rng(0)
    return orjson.dumps(
        {
            "model": "fashion-mnist",
            "seed": 0,
            "latents": rng.standard_normal((1, 32), dtype=np.float32),
            "images": rng.random((1, 28, 28), dtype=np.float32),
        },
        option=orjson.OPT_SERIALIZE_NUMPY,
    )


def create_app() -> FastAPI:
    body = sample_answer()
    app = FastAPI()

    @app.post("/sample")
    async def sample():
        return Response(body, media_type="application/json")

    @app.get("/health/ready")
    async def ready():
        return {"status": "ready"}

    return app


if __name__ == "__main__":
    uvicorn.run(create_app(), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
