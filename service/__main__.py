"""``python -m service`` / ``vae-serve``: the settings, then one server process (``service.server``) or,
with more than one worker (``VAE_WORKERS``), a supervisor of N of them (``service.workers``).

Only the settings and the supervisor are imported here: a supervisor never loads a model, and
each worker imports the app itself. ``vae-serve score`` (``service.score_cli``) scores a dataset in
this process, with no server.
"""

from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from .logs import configure_logging
from .settings import Settings
from .tracing import exporters_from_environment
from .workers import Supervisor, default_workers


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["score"]:  # offline: a dataset through the same graphs, no server
        from .score_cli import main as score  # here: a supervisor never imports onnxruntime

        return score(argv[1:])
    parser = argparse.ArgumentParser(
        prog="vae-serve",
        description="Serve the VAE models in VAE_MODEL_DIR over HTTP (`vae-serve score --help`: score a dataset).",
    )
    parser.add_argument("--host", help="bind address (VAE_HOST, default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="bind port (VAE_PORT, default 8000)")
    parser.add_argument("--model-dir", help="folder of models/<name>/ (VAE_MODEL_DIR, default models)")
    parser.add_argument("--workers", type=int, help="worker processes (VAE_WORKERS, default one per core or GPU)")
    args = parser.parse_args(argv)
    overrides = {"host": args.host, "port": args.port, "model_dir": args.model_dir, "workers": args.workers}
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in exc.errors())
        sys.exit(f"vae-serve: invalid settings: {problems}")
    try:
        exporters_from_environment()
    except ValueError as exc:
        sys.exit(f"vae-serve: tracing: {exc}")
    count = settings.workers or default_workers()
    if count == 1:
        from .server import serve  # here, not at the top: a supervisor never imports the app

        return serve(settings)
    configure_logging(settings.log_level, settings.log_format)
    Supervisor(settings, count).run()


if __name__ == "__main__":
    main()
