"""The shipped models/ served two ways: in-process (``client``: the app through httpx's ASGI
transport, lifespan included) for route tests, and a real uvicorn process on a free 127.0.0.1
port (``server``) for what needs one: disconnects, signals, tritonclient, a browser."""

import asyncio
import threading
import time
from pathlib import Path

import httpx
import pytest

from benchmarks.live import LiveServer, vae_serve
from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
LIMITS = {"max_request_rows": 256, "max_samples": 500, "max_sample_rows": 20000, "max_body_bytes": 4 * 1024 * 1024}


def start_server(model_dir: Path, log_path: Path, **settings) -> tuple[LiveServer, str]:
    """``python -m service`` on a free port, ready; VAE_* settings as keyword arguments (max_request_rows=256)."""
    server = vae_serve(model_dir, log_path, **settings)
    server.start(timeout_s=90)
    return server, server.url


class InProcessClient:
    """The app through httpx's ASGI transport, with its lifespan, on an event loop in a thread of
    its own; the sync methods the tests call (``get``, ``post``, ``request``) wait for it."""

    def __init__(self, app):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="asgi", daemon=True)
        self.thread.start()
        transport = httpx.ASGITransport(app=app)
        self.client = httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=60)
        self.lifespan = app.router.lifespan_context(app)
        self.wait(self.lifespan.__aenter__())

    def wait(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def request(self, method: str, url: str, **kwargs) -> httpx.Response:
        return self.wait(self.client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def close(self) -> None:
        self.wait(self.lifespan.__aexit__(None, None, None))
        self.wait(self.client.aclose())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    server, url = start_server(ROOT / "models", tmp_path_factory.mktemp("server") / "server.log", **LIMITS)
    yield url
    server.stop()


@pytest.fixture(scope="session")
def client():
    c = InProcessClient(create_app(Settings(model_dir=ROOT / "models", **LIMITS)))
    deadline = time.monotonic() + 60
    while c.get("/health/ready").status_code != 200 and time.monotonic() < deadline:  # warm-up runs in the background
        time.sleep(0.05)
    yield c
    c.close()


@pytest.fixture(scope="session")
def models(client):
    return {m["name"]: m for m in client.get("/models").json()["models"]}
