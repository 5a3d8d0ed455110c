"""``python -m service`` / ``vae-serve``: uvicorn on the configured host and port, with a SIGTERM drain."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import time

import uvicorn

from .app import create_app
from .logs import configure_logging
from .settings import Settings

log = logging.getLogger("service")


class DrainingServer(uvicorn.Server):
    """SIGTERM drains instead of stopping at once, as a rolling update needs.

    Readiness turns 503 and new requests get 503 (``RequestMiddleware``) while the accepted ones
    finish, for at most ``grace_s``; then uvicorn shuts down as usual and the process exits 0.
    A second signal, or SIGINT, stops at once.
    """

    def __init__(self, config: uvicorn.Config, lifecycle, grace_s: float):
        super().__init__(config)
        self.lifecycle, self.grace_s = lifecycle, grace_s
        self._drain: asyncio.Task | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if sig != signal.SIGTERM or self.lifecycle.draining:
            return super().handle_exit(sig, frame)
        self.lifecycle.draining = True
        log.info("SIGTERM: draining %d requests in flight (grace %.0f s)", self.lifecycle.in_flight, self.grace_s)
        loop = asyncio.get_event_loop()
        loop.call_soon_threadsafe(lambda: setattr(self, "_drain", loop.create_task(self.drain())))

    async def drain(self) -> None:
        deadline = time.monotonic() + self.grace_s
        while self.lifecycle.in_flight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        log.info("drained (%d requests left in flight); shutting down", self.lifecycle.in_flight)
        self.should_exit = True


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vae-serve", description="Serve the VAE models in VAE_MODEL_DIR over HTTP.")
    parser.add_argument("--host", help="bind address (VAE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="bind port (VAE_PORT, default 8000)")
    parser.add_argument("--model-dir", help="folder of models/<name>/ (VAE_MODEL_DIR, default models)")
    args = parser.parse_args(argv)
    overrides = {
        k: v for k, v in {"host": args.host, "port": args.port, "model_dir": args.model_dir}.items() if v is not None
    }
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        access_log=False,
        log_config=None,
    )  # our JSON handler, not uvicorn's
    DrainingServer(config, app.state.lifecycle, settings.shutdown_grace_s).run()


if __name__ == "__main__":
    main()
