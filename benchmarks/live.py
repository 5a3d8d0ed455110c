"""Live servers on 127.0.0.1 for the tests and the benchmarks: a free port, a process in its own
session, ready when its health route answers 200, stopped with SIGTERM then SIGKILL."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


class LiveServer:
    """``command`` (with ``{port}`` where the port goes) on a free port, its output in ``log_path``.

    VAE_HOST and VAE_PORT are set for it, so ``python -m service`` needs nothing else.
    """

    def __init__(
        self,
        command: list[str],
        log_path: Path,
        env: dict[str, str] | None = None,
        ready_path: str = "/health/ready",
        ready: Callable[[str], bool] | None = None,  # given the address host:port (a gRPC server has no HTTP)
    ):
        self.port = free_port()
        self.ready = ready
        self.command = [part.format(port=self.port) for part in command]
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path, self.ready_path = log_path, ready_path
        self.env = {**os.environ, "VAE_PORT": str(self.port), "VAE_HOST": "127.0.0.1", **(env or {})}
        self.process: subprocess.Popen | None = None
        self._log = None

    def start(self, timeout_s: float = 120.0) -> float:
        """Start and wait until ready; returns seconds from spawn to the first 200 from the ready path."""
        started = time.perf_counter()
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            self.command, cwd=ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        while time.perf_counter() - started < timeout_s:
            if self.process.poll() is not None:
                self._log.close()
                raise RuntimeError(
                    f"{self.command} exited with {self.process.returncode}:\n{self.log_path.read_text()[-3000:]}"
                )
            if self.ready(f"127.0.0.1:{self.port}") if self.ready else is_ready(self.url + self.ready_path):
                return time.perf_counter() - started
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"{self.command} not ready in {timeout_s:.0f} s:\n{self.log_path.read_text()[-3000:]}")

    def signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    def stop(self, timeout_s: float = 20.0) -> None:
        """SIGTERM to the whole process group, SIGKILL to whatever is left (a peer's workers)."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=timeout_s)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        self._log.close()

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


def vae_serve(model_dir: Path, log_path: Path, **settings) -> LiveServer:
    """``python -m service`` over ``model_dir`` with VAE_* settings given as keyword arguments."""
    env = {"VAE_MODEL_DIR": str(model_dir), "VAE_GRPC_PORT": str(free_port())}  # each server its own gRPC port
    env.update({f"VAE_{k.upper()}": str(v) for k, v in settings.items()})
    return LiveServer([sys.executable, "-m", "service"], log_path, env)
