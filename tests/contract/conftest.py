"""A real uvicorn process on a free 127.0.0.1 port, serving the shipped models/."""

from pathlib import Path

import httpx
import pytest

from benchmarks.live import LiveServer, vae_serve

ROOT = Path(__file__).resolve().parents[2]


def start_server(model_dir: Path, log_path: Path, **settings) -> tuple[LiveServer, str]:
    """``python -m service`` on a free port, ready; VAE_* settings as keyword arguments (max_request_rows=256)."""
    server = vae_serve(model_dir, log_path, **settings)
    server.start(timeout_s=90)
    return server, server.url


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    server, url = start_server(ROOT / "models", tmp_path_factory.mktemp("server") / "server.log",
                                max_request_rows=256, max_samples=500, max_sample_rows=20000,
                                max_body_bytes=4 * 1024 * 1024)
    yield url
    server.stop()


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def models(client):
    return {m["name"]: m for m in client.get("/models").json()["models"]}
