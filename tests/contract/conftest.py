"""A real uvicorn process on a free 127.0.0.1 port, serving the shipped models/."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model_dir: Path, log_path: Path, **env_overrides) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "VAE_MODEL_DIR": str(model_dir), "VAE_HOST": "127.0.0.1", "VAE_PORT": str(port),
           **{k: str(v) for k, v in env_overrides.items()}}
    log = log_path.open("w")
    process = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}:\n{log_path.read_text()}")
        try:
            if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError(f"server not ready in 90 s:\n{log_path.read_text()}")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    process, url = start_server(ROOT / "models", tmp_path_factory.mktemp("server") / "server.log",
                                VAE_MAX_REQUEST_ROWS=256, VAE_MAX_SAMPLES=500, VAE_MAX_SAMPLE_ROWS=20000,
                                VAE_MAX_BODY_BYTES=4 * 1024 * 1024)
    yield url
    stop_server(process)


@pytest.fixture(scope="session")
def client(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        yield c


@pytest.fixture(scope="session")
def models(client):
    return {m["name"]: m for m in client.get("/models").json()["models"]}
