"""``python -m benchmarks``: every scenario against vae-serve and its peers, one run, one machine.

Writes ``benchmarks/results/results.{json,md}`` and ``throughput.png``. Peers: vae-serve with its
default workers, with one worker, and with batching off; a lean naive FastAPI + onnxruntime app;
mosec with one worker (its default) and with two; MLServer (OIP, its own environment); LitServe;
the HTTP floors (FastAPI and raw ASGI answering a constant body); onnxruntime in this process (the
compute floor). Servers run one at a time on 127.0.0.1; wrk (Debian's) is the load generator.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from service.settings import Settings
from service.workers import default_workers

from .grpc_load import MODEL_INFER, grpc_ready, infer_request
from .h2load import GRPC_HEADERS, grpc_frame, h2load
from .live import ROOT, free_port
from .load import Peer, Server, python_command, wrk
from .otlp_sink import start_sink
from .overload import burst, overload
from .report import MLSERVER, MOSEC_1, MOSEC_2, ONE_WORKER, TRACED_1, TRACED_ALL, write_report
from .scenarios import NPY, burst_scenario, inprocess_rows_per_second, oip_decoder_scenario, scenarios

log = logging.getLogger("benchmarks")
SERVICE = "vae-serve"


MLSERVER_PYTHON = ROOT / ".venv-mlserver" / "bin" / "python"


def traced(model: str, sink_port: int, ratio: str) -> dict[str, str]:
    """vae-serve's environment with tracing on: OTLP/HTTP to the sink, root spans sampled at ``ratio``."""
    return {"VAE_DEFAULT_MODEL": model, "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{sink_port}", "OTEL_TRACES_SAMPLER": "traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": ratio}  # fmt: skip


def peers(model: str, sink_port: int = 0) -> list[Peer]:
    service, both = python_command("service"), ("rest", "oip")
    workers = default_workers()
    n1 = ("sample n=1",)
    return [
        Peer(SERVICE, service, {"VAE_DEFAULT_MODEL": model}, protocols=both),
        Peer(ONE_WORKER, service, {"VAE_DEFAULT_MODEL": model, "VAE_WORKERS": "1"}, protocols=both),
        Peer("vae-serve, no batching", service, {"VAE_DEFAULT_MODEL": model, "VAE_BATCHING": "false"}, only=n1),
        Peer(TRACED_ALL, service, traced(model, sink_port, "1.0"), only=n1),
        Peer(TRACED_1, service, traced(model, sink_port, "0.01"), only=n1),
        Peer("naive FastAPI", python_command("benchmarks.peers.naive") + ["{port}"]),
        Peer(
            MOSEC_1,
            python_command("benchmarks.peers.mosec_peer") + ["{port}", "1", "10"],
            ready_path="/",
            only=("sample n=1", "sample n=64"),
        ),  # fmt: skip
        Peer(
            MOSEC_2,
            python_command("benchmarks.peers.mosec_peer") + ["{port}", "2", "1"],
            ready_path="/",
            only=("sample n=1", "sample n=64"),
        ),  # fmt: skip
        Peer(
            MLSERVER,
            [str(MLSERVER_PYTHON), "benchmarks/peers/mlserver/serve.py", "{port}"],
            ready_path="/v2/health/ready",
            protocols=("oip",),
        ),  # fmt: skip
        Peer("LitServe", python_command("benchmarks.peers.lit") + ["{port}"], npy=False, only=n1),
        Peer("hello (FastAPI floor)", python_command("benchmarks.peers.hello") + ["{port}"], only=n1),
        Peer(
            f"raw ASGI floor, {workers} workers",
            python_command("benchmarks.peers.floor") + ["{port}", str(workers)],
            only=n1,
        ),  # fmt: skip
        Peer("raw ASGI floor, 1 worker", python_command("benchmarks.peers.floor") + ["{port}", "1"], only=n1),
    ]


def machine() -> dict:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kb / 2**20, 1),
        "python": platform.python_version(),
        "onnxruntime": ort.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }


def load_runs(args, all_scenarios, log_dir: Path) -> list[dict]:
    runs = []
    sink = start_sink()
    for peer in peers(args.model, sink.server_port):
        if args.peers and peer.name not in args.peers:
            continue
        with Server(peer, log_dir) as server:
            log.info("%s ready on %s", peer.name, server.url)
            for scenario in all_scenarios:
                if not peer.serves(scenario):
                    continue
                body, content_type, accept, path = scenario.request(peer.npy)
                wrk(server.url + path, body, content_type, accept, 1, 1)  # warm-up, not recorded
                for connections in args.concurrency:
                    server.wait_idle()  # requests the last run left in flight are not this run's
                    result = wrk(server.url + path, body, content_type, accept, connections, args.duration)
                    runs.append(
                        {
                            "peer": peer.name,
                            "scenario": scenario.name,
                            "connections": connections,
                            "format": "npy" if content_type == NPY else "json",
                            "rows_per_s": result["rps"] * scenario.rows,
                            **result,
                        }
                    )
                    log.info(
                        "%-24s %-22s c=%-4d %8.0f req/s  p50 %6.1f ms  p99 %6.1f ms  errors %d",
                        peer.name,
                        scenario.name,
                        connections,
                        result["rps"],
                        result["p50_us"] / 1e3,
                        result["p99_us"] / 1e3,
                        result["errors"],
                    )
    sink.shutdown()
    sink.server_close()
    return runs


def cold_starts(args, log_dir: Path) -> list[float]:
    """Process spawn -> /health/ready 200, vae-serve with the shipped models, default settings."""
    times = []
    for _ in range(args.cold_starts):
        server = Server(Peer(SERVICE, python_command("service")), log_dir)
        try:
            times.append(server.start())
        finally:
            server.stop()
    return times


def soak(args, all_scenarios, log_dir: Path) -> dict:
    """RSS after a round of every scenario, then after each stretch of /sample n=1 up to ``soak_requests``."""
    with Server(Peer(SERVICE, python_command("service"), {"VAE_DEFAULT_MODEL": args.model}), log_dir) as server:
        for scenario in all_scenarios:
            body, content_type, accept, path = scenario.request(True)
            wrk(server.url + path, body, content_type, accept, 64, 3)
        server.wait_idle()
        points = [{"requests": 0, **_memory(server)}]
        body, content_type, accept, path = all_scenarios[0].request(True)
        total = 0
        while total < args.soak_requests:
            result = wrk(server.url + path, body, content_type, accept, 64, args.soak_stretch)
            total += result["requests"]
            points.append({"requests": total, **_memory(server), "errors": result["errors"]})
            log.info("soak: %d requests, RSS %.0f MB", total, points[-1]["rss_mb"])
    return {"points": points}


def _memory(server: Server) -> dict:
    """RSS of everything the server runs, and of each process above 100 MB (the workers, which hold
    models; not the supervisor and its helpers), in pid order."""
    by_pid = server.rss_by_process()
    return {"rss_mb": sum(by_pid.values()), "worker_rss_mb": [mb for _, mb in sorted(by_pid.items()) if mb > 100]}


def run_overload(args, latent_dim: int, log_dir: Path) -> dict:
    """vae-serve with default settings, offered ``overload_factor`` × its capacity, open loop; with
    ``--overload-deadline-ms`` each request sends that deadline, else the server's default applies."""
    (scenario,) = [s for s in scenarios(latent_dim) if s.name.startswith(args.overload_scenario)][:1]
    given = args.overload_deadline_ms is not None
    deadline_ms = args.overload_deadline_ms if given else Settings.model_fields["request_timeout_ms"].default
    with Server(Peer(SERVICE, python_command("service"), {"VAE_DEFAULT_MODEL": args.model}), log_dir) as server:
        return overload(server, scenario, args.overload_factor, args.overload_duration, deadline_ms, given)


def run_grpc(args, latent_dim: int, log_dir: Path) -> list[dict]:
    """gRPC against HTTP on one server, driven by h2load: OIP ModelInfer on the decoder (raw
    contents, 1 and 256 rows) and HTTP OIP infer (JSON, 1 row); then the grpc.aio floor (a constant
    answer, as many processes) under the same load."""
    port = free_port()
    grpc_url = f"http://127.0.0.1:{port}{MODEL_INFER}"
    calls = {rows: grpc_frame(infer_request(rows, latent_dim).SerializeToString()) for rows in (1, 256)}
    oip = oip_decoder_scenario(np.random.default_rng(1).standard_normal((1, latent_dim)).round(4).tolist())
    body, content_type, _, path = oip.request(False)
    runs = []
    service = Peer(SERVICE, python_command("service"), {"VAE_DEFAULT_MODEL": args.model, "VAE_GRPC_PORT": str(port)})
    with Server(service, log_dir) as server:
        if not grpc_ready(f"127.0.0.1:{port}", latent_dim):
            raise RuntimeError(f"vae-serve's gRPC port {port} gives no answer to ModelInfer")
        for rows, call in calls.items():
            runs += _h2load_runs(args, server, "grpc", rows, grpc_url, call, GRPC_HEADERS)
        runs += _h2load_runs(args, server, "http", 1, server.url + path, body, {"content-type": content_type})
    workers = str(default_workers())
    floor = Peer(
        f"grpc.aio floor, {workers} workers", [*python_command("benchmarks.peers.grpc_floor"), "{port}", workers]
    )
    with Server(floor, log_dir, ready=grpc_ready) as server:
        url = f"http://127.0.0.1:{server.port}{MODEL_INFER}"
        runs += _h2load_runs(args, server, "grpc floor", 1, url, calls[1], GRPC_HEADERS)
    return runs


def _h2load_runs(args, server, transport: str, rows: int, url: str, body: bytes, headers: dict) -> list[dict]:
    """A warm-up, then one h2load run per concurrency; ``transport`` "http" is HTTP/1.1, else HTTP/2."""
    http1 = transport == "http"
    h2load(url, body, headers, 1, 1, http1=http1)  # warm-up, not recorded
    runs = []
    for connections in args.concurrency:
        server.wait_idle()
        result = h2load(url, body, headers, connections, args.grpc_duration, http1=http1)
        runs.append({"transport": transport, "rows": rows, "connections": connections, **result})
        runs[-1]["rows_per_s"] = result["rps"] * rows
        p50_ms, p99_ms = result["p50_us"] / 1e3, result["p99_us"] / 1e3
        log.info("%-10s decoder n=%-4d c=%-4d %8.0f req/s  p50 %6.1f ms  p99 %6.1f ms  errors %d", transport, rows,
                 connections, result["rps"], p50_ms, p99_ms, result["errors"])  # fmt: skip
    return runs


def run_burst(args, log_dir: Path) -> dict:
    """vae-serve with default settings, ``--burst-clients`` requests at once, each with a ``--burst-deadline-ms``."""
    body, content_type, accept, path = burst_scenario().request(False)
    headers = {"content-type": content_type, "accept": accept, "x-timeout-ms": f"{args.burst_deadline_ms:g}"}
    with Server(Peer(SERVICE, python_command("service"), {"VAE_DEFAULT_MODEL": args.model}), log_dir) as server:
        result = {"scenario": burst_scenario().name, "deadline_ms": args.burst_deadline_ms}
        result.update(burst(server.url + path, body, headers, args.burst_clients))
    log.info("burst of %d, deadline %g ms: %s, slowest 200 %.0f ms", args.burst_clients, args.burst_deadline_ms,
             result["outcomes"], result["max_ok_ms"] or 0)  # fmt: skip
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5, help="seconds per wrk run (default 5)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 256])
    parser.add_argument("--model", default="fashion-mnist")
    parser.add_argument("--peers", nargs="*", help="only these peers (names as in the table)")
    parser.add_argument("--scenarios", nargs="*", help="only scenarios whose name starts with one of these")
    parser.add_argument("--cold-starts", type=int, default=3)
    parser.add_argument("--soak-requests", type=int, default=100_000, help="0 skips the memory soak")
    parser.add_argument("--soak-stretch", type=float, default=8, help="seconds between RSS readings in the soak")
    parser.add_argument("--overload-scenario", default="elbo", help="open-loop overload on the scenario starting so")
    parser.add_argument("--overload-factor", type=float, default=2.0, help="offered rate as a multiple of capacity")
    parser.add_argument("--overload-duration", type=float, default=15, help="seconds of arrivals; 0 skips the run")
    parser.add_argument("--overload-deadline-ms", type=float, help="X-Timeout-Ms on each overload request")
    parser.add_argument("--burst-clients", type=int, default=300, help="requests sent at once; 0 skips the burst")
    parser.add_argument("--burst-deadline-ms", type=float, default=3000, help="X-Timeout-Ms on each burst request")
    parser.add_argument("--grpc-duration", type=float, default=5, help="seconds per gRPC run; 0 skips them")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    model_dir = ROOT / "models" / args.model
    latent_dim = json.loads((model_dir / "manifest.json").read_text())["latent_dim"]
    chosen = [
        s for s in scenarios(latent_dim) if not args.scenarios or any(s.name.startswith(p) for p in args.scenarios)
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = args.out / "logs"
    log_dir.mkdir(exist_ok=True)

    started = time.perf_counter()
    results = {"machine": machine(), "model": args.model, "duration_s": args.duration, "concurrency": args.concurrency}
    results["inprocess"] = {s.name: inprocess_rows_per_second(model_dir, s) for s in chosen}
    log.info("in-process onnxruntime: %s", {k: round(v) for k, v in results["inprocess"].items()})
    results["cold_start_s"] = cold_starts(args, log_dir)  # first, on a quiet machine
    log.info("cold start: %s s", [round(t, 2) for t in results["cold_start_s"]])
    results["runs"] = load_runs(args, chosen, log_dir)
    if args.soak_requests:
        results["soak"] = soak(args, chosen, log_dir)
    if args.overload_duration:
        results["overload"] = run_overload(args, latent_dim, log_dir)
    if args.burst_clients:
        results["burst"] = run_burst(args, log_dir)
    if args.grpc_duration:
        results["grpc"] = run_grpc(args, latent_dim, log_dir)
    results["wall_s"] = time.perf_counter() - started
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    write_report(results, args.out)
    log.info("wrote %s in %.0f s", args.out / "results.md", results["wall_s"])


if __name__ == "__main__":
    main()
