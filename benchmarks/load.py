"""Processes under test and the load generator: start a peer, wait for ready, drive it with wrk.

Everything runs on 127.0.0.1, one server at a time, each run bounded by wrk's ``--duration``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .live import LiveServer

LUA = Path(__file__).with_name("wrk.lua")
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Peer:
    name: str
    command: list[str]  # with {port} where the port goes
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/health/ready"
    npy: bool = True  # reads NPY bodies
    only: tuple[str, ...] = ()  # scenario names it serves (empty: all of its protocols')
    protocols: tuple[str, ...] = ("rest",)  # rest: vae-serve's routes; oip: the Open Inference Protocol

    def serves(self, scenario) -> bool:
        return scenario.protocol in self.protocols and (not self.only or scenario.name in self.only)


class Server(LiveServer):
    """A peer's process (and its children, in their own session) on a free port."""

    def __init__(self, peer: Peer, log_dir: Path, ready: Callable[[str], bool] | None = None):
        super().__init__(peer.command, log_dir / f"{peer.name.replace(' ', '_')}.log", peer.env, peer.ready_path, ready)
        self.peer = peer
        self.idle_share = 0.0  # CPU share the peer burns with no load (LitServe's workers poll)

    def start(self, timeout_s: float = 120.0) -> float:
        """Start, wait until ready, then measure the CPU share the peer burns idle."""
        ready_after = super().start(timeout_s)
        before = self.cpu_seconds()
        time.sleep(1.0)
        self.idle_share = self.cpu_seconds() - before
        return ready_after

    def rss_mb(self) -> float:
        """Resident memory of the server process and its children, from /proc."""
        return sum(self.rss_by_process().values())

    def rss_by_process(self) -> dict[int, float]:
        """Resident memory (MB) of the server process and of each of its children, by pid."""
        found = {}
        for pid in [self.process.pid] + [int(p) for p in _children(self.process.pid)]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        found[pid] = int(line.split()[1]) / 1024
            except FileNotFoundError:
                pass
        return found

    def cpu_seconds(self) -> float:
        """CPU time (user + system) used so far by the server and its children."""
        total = 0
        for pid in [self.process.pid] + [int(p) for p in _children(self.process.pid)]:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime in clock ticks
            except (FileNotFoundError, IndexError):
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def wait_idle(self, window_s: float = 0.3, busy_share: float = 0.1, timeout_s: float = 60.0) -> float:
        """Wait until the server stops working off requests a finished wrk run left in flight."""
        started = time.perf_counter()
        while time.perf_counter() - started < timeout_s:
            before = self.cpu_seconds()
            time.sleep(window_s)
            if self.cpu_seconds() - before < (self.idle_share + busy_share) * window_s:
                break
        return time.perf_counter() - started


def _children(pid: int) -> list[str]:
    found = []
    for path in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in path.read_text().split():
            found += [child, *_children(int(child))]
    return found


def wrk(url: str, body: bytes, content_type: str, accept: str, connections: int, duration_s: float) -> dict:
    """One wrk run: requests, errors and latency percentiles (µs) as a dict."""
    with tempfile.NamedTemporaryFile(suffix=".body") as body_file:
        body_file.write(body)
        body_file.flush()
        threads = min(2, connections)
        command = [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{duration_s:g}s",
            "--timeout",
            "60s",
            "-s",
            str(LUA),
            url,
            "--",
            body_file.name,
            content_type,
            accept,
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = result["duration_us"] / 1e6
    errors = sum(result[k] for k in ("connect_errors", "read_errors", "write_errors", "non_2xx", "timeouts"))
    return {**result, "rps": result["requests"] / seconds, "errors": errors}


def python_command(module: str) -> list[str]:
    return [sys.executable, "-m", module]
