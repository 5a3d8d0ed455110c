"""``python -m benchmarks.profile``: where a vae-serve worker's time goes under load, as a table.

Starts vae-serve with its defaults on 127.0.0.1, drives ``/sample`` n=1 JSON at c=64 with wrk,
samples one worker with py-spy (200 Hz, its event-loop thread and its ORT threads), and writes
``results/profile-sample-n1-c64.md``: each thread's busy share, then the event loop's time by
function, inclusive and self (a C extension's time shows under the Python frame that called it).
The raw samples go beside it (``.txt``, py-spy's collapsed stacks).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import threading
from pathlib import Path

from .live import ROOT
from .load import Peer, Server, python_command, wrk
from .scenarios import scenarios

LOOP = "Runner.run (runners.py)"
FRAME = re.compile(r" \((?:.*/)?([^/]+\.py|<[^>]+>)(?::\d+)?\)$")


def collapse(raw: str) -> tuple[dict[str, int], collections.Counter, collections.Counter, int]:
    """py-spy's raw lines -> samples per thread, and the main thread's inclusive and self counts."""
    threads: dict[str, int] = collections.Counter()
    inclusive, own, main = collections.Counter(), collections.Counter(), 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        thread = re.sub(r"thread \(\d+\): ", "", frames[0])
        threads[thread] += int(count)
        if thread != "MainThread":
            continue
        main += int(count)
        names = [FRAME.sub(r" (\1)", f) for f in frames[1:]]
        if LOOP in names:  # what runs the loop (process start, uvicorn, asyncio.run) is every sample's base
            names = names[names.index(LOOP) + 1 :]
            own[names[-1] if names else "the event loop itself (uvloop's C: sockets, ready queue, task switches)"] += (
                int(count)
            )
        else:
            own[names[-1] if names else "(idle)"] += int(count)
        for name in set(names):
            inclusive[name] += int(count)
    return threads, inclusive, own, main


def table(raw: str, seconds: float, rate_hz: int, rps: float, top: int = 25) -> str:
    threads, inclusive, own, main = collapse(raw)
    possible = seconds * rate_hz
    lines = [f"One worker of two, {seconds:g} s at {rate_hz} Hz, while the server answered {rps:,.0f} req/s.", "",
             "| thread | busy |", "|---|---|"]  # fmt: skip
    lines += [f"| {name} | {100 * n / possible:.0f} % |" for name, n in sorted(threads.items(), key=lambda t: -t[1])]
    for title, counts in (("inclusive", inclusive), ("self", own)):
        lines += [
            "",
            f"Event-loop thread, {title} (share of its busy samples):",
            "",
            "| share | function |",
            "|---|---|",
        ]
        lines += [f"| {100 * n / main:.1f} % | `{name}` |" for name, n in counts.most_common(top)]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    (sample,) = [s for s in scenarios(32) if s.name == "sample n=1"]
    body, content_type, accept, path = sample.request(False)
    args.out.mkdir(parents=True, exist_ok=True)
    raw_path = args.out / "profile-sample-n1-c64.txt"
    with Server(Peer("vae-serve", python_command("service")), args.out) as server:
        wrk(server.url + path, body, content_type, accept, 64, 2)  # warm-up
        worker = max(server.rss_by_process().items(), key=lambda item: item[1])[0]  # a worker holds the models
        result = {}
        load = threading.Thread(target=lambda: result.update(wrk(server.url + path, body, content_type, accept, 64,
                                                                 args.seconds + 3)))  # fmt: skip
        load.start()
        subprocess.run([str(Path(sys.executable).with_name("py-spy")), "record", "-p", str(worker), "-d",
                        f"{args.seconds:g}", "-r", str(args.rate), "-f", "raw", "-t", "--nonblocking", "-o",
                        str(raw_path)], check=True, capture_output=True, timeout=args.seconds + 60)  # fmt: skip
        load.join()
    report = table(raw_path.read_text(), args.seconds, args.rate, result["rps"])
    (args.out / "profile-sample-n1-c64.md").write_text("# /sample n=1 JSON at c=64: a worker's profile\n\n" + report)
    print(report)


if __name__ == "__main__":
    main()
