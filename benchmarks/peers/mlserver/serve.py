"""Start MLServer on PORT with the decoder as ``fashion-mnist-decoder`` (the name vae-serve's OIP
route gives it), adaptive batching up to 64 requests or 1 ms. Run with ``.venv-mlserver``'s Python:
``python benchmarks/peers/mlserver/serve.py PORT``; readiness is ``/v2/health/ready``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent

if __name__ == "__main__":
    port = sys.argv[1]
    folder = Path(tempfile.mkdtemp(prefix="mlserver-"))
    (folder / "settings.json").write_text(
        json.dumps(
            {
                "http_port": int(port),
                "grpc_port": 0,
                "metrics_port": 0,
                "host": "127.0.0.1",
                "parallel_workers": 0,
                "debug": False,
            }
        )  # fmt: skip
    )
    (folder / "model-settings.json").write_text(
        json.dumps(
            {
                "name": "fashion-mnist-decoder",
                "implementation": "runtime.Decoder",
                "max_batch_size": 64,
                "max_batch_time": 0.001,
            }
        )  # fmt: skip
    )
    env = {**os.environ, "PYTHONPATH": str(HERE)}
    os.execve(sys.executable, [sys.executable, "-m", "mlserver.cli.main", "start", str(folder)], env)
