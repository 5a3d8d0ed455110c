"""The HTTP/2 and gRPC load generator: h2load (Debian's nghttp2-client), a compiled client, so no
Python client bounds a figure. It drives gRPC as what it is on the wire (a POST of a
length-prefixed protobuf over HTTP/2) and HTTP/1.1 with ``--h1``, closed loop, for a duration.

Latency percentiles come from h2load's per-request log; a request counts as an error unless its
status is 200 (a gRPC call's own status travels in trailers, which h2load does not read: the
harness checks one call's answer before each run).
"""

from __future__ import annotations

import re
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

GRPC_HEADERS = {"content-type": "application/grpc", "te": "trailers"}
STREAMS_PER_CONNECTION = 8  # gRPC clients multiplex calls over a few channels


def grpc_frame(message: bytes) -> bytes:
    """A gRPC message on the wire: uncompressed flag, big-endian length, the bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


def h2load(url: str, body: bytes, headers: dict[str, str], connections: int, duration_s: float,
           http1: bool = False) -> dict:  # fmt: skip
    """One closed-loop run of ``connections`` requests in flight: requests, req/s, p50/p99 (µs), errors.

    HTTP/2 (gRPC) spreads them over ``connections / 8`` connections of 8 streams; HTTP/1.1 opens one
    connection each.
    """
    if http1:
        shape = ["--h1", "-c", str(connections), "-m", "1"]
    else:
        conns = max(1, connections // STREAMS_PER_CONNECTION)
        shape = ["-c", str(conns), "-m", str(max(1, connections // conns))]
    with tempfile.TemporaryDirectory() as folder:
        body_file, log_file = Path(folder) / "body", Path(folder) / "log"
        body_file.write_bytes(body)
        header_args = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
        command = ["h2load", *shape, "-t", "1", "-D", f"{duration_s:g}", "--log-file", str(log_file),
                   "-d", str(body_file), *header_args, url]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + 60)
        if done.returncode != 0:
            raise RuntimeError(f"h2load failed ({done.returncode}): {done.stderr.strip() or done.stdout[-500:]}")
        log = np.loadtxt(log_file, dtype=np.int64, ndmin=2) if log_file.stat().st_size else np.zeros((0, 3), int)
    statuses, elapsed_us = log[:, 1], log[:, 2]
    starts_s = (log[:, 0] - log[:, 0].min()) / 1e6 if len(log) else np.zeros(0)
    seconds = max(float(starts_s.max() + elapsed_us[starts_s.argmax()] / 1e6), 1e-9) if len(log) else duration_s
    p50, p99 = (float(np.percentile(elapsed_us, q)) for q in (50, 99)) if len(log) else (0.0, 0.0)
    return {
        "requests": int(len(log)),
        "rps": len(log) / seconds,
        "p50_us": p50,
        "p99_us": p99,
        "errors": int(np.count_nonzero(statuses != 200)) + _failed(done.stdout),
    }


def _failed(report: str) -> int:
    """Requests h2load counts as errored or timed out (no answer at all: not in its log), and one
    more when nothing was answered (a refused connection starts no request)."""
    line = next((ln for ln in report.splitlines() if ln.startswith("requests:")), "")
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (failed|errored|timeout)", line)}
    done = int(m.group(1)) if (m := re.search(r"(\d+) done", line)) else 0
    return counts.get("errored", 0) + counts.get("timeout", 0) + (0 if done else 1)  # nothing answered: an error
