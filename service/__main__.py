"""``python -m service`` / ``vae-serve``: start uvicorn on the configured host and port."""

from __future__ import annotations

import argparse
import logging

import uvicorn

from .app import create_app
from .settings import Settings


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="vae-serve", description="Serve the VAE models in VAE_MODEL_DIR over HTTP.")
    parser.add_argument("--host", help="bind address (VAE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="bind port (VAE_PORT, default 8000)")
    parser.add_argument("--model-dir", help="folder of models/<name>/ (VAE_MODEL_DIR, default models)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in {"host": args.host, "port": args.port, "model_dir": args.model_dir}.items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=settings.log_level.lower(),
                access_log=False)


if __name__ == "__main__":
    main()
