"""results.json -> results.md (targets, tables, ratios) and throughput.png."""

from __future__ import annotations

import statistics
from pathlib import Path

SERVICE, ONE_WORKER, NO_BATCHING, NAIVE, LITSERVE = (
    "vae-serve",
    "vae-serve, 1 worker",
    "vae-serve, no batching",
    "naive FastAPI",
    "LitServe",
)
TRACED_ALL, TRACED_1 = "vae-serve, traced, 100 % sampled", "vae-serve, traced, 1 % sampled"
MOSEC_1, MOSEC_2, MLSERVER = "mosec, 1 worker (default)", "mosec, 2 workers, 1 ms wait", "MLServer (OIP)"
SAMPLE_1, DECODE_256, OIP_1 = "sample n=1", "decode 256", "oip decoder n=1"


def run_of(runs: list[dict], peer: str, scenario: str, connections: int) -> dict | None:
    return next(
        (r for r in runs if r["peer"] == peer and r["scenario"] == scenario and r["connections"] == connections), None
    )


def ratio(a: dict | None, b: dict | None, key: str = "rps") -> float | None:
    return a[key] / b[key] if a and b and b[key] else None


def fmt(value: float | None, spec: str = ".2f", suffix: str = "×") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def best_of(runs: list[dict], peers: tuple[str, ...], scenario: str, connections: int) -> dict | None:
    found = [r for p in peers if (r := run_of(runs, p, scenario, connections))]
    return max(found, key=lambda r: r["rps"]) if found else None


def _versus(name: str, ours: dict | None, theirs: dict | None, goal: float | None) -> tuple[str, str, bool | None]:
    """A ratio of req/s and whether it meets ``goal`` (None: a measurement to report, not a target)."""
    value = ratio(ours, theirs)
    if value is None:
        return name, "n/a", None
    measured = f"{value:.2f}× ({ours['rps']:,.0f} vs {theirs['rps']:,.0f} req/s, {theirs['peer']})"
    return name, measured, None if goal is None else value >= goal


def targets(results: dict) -> list[tuple[str, str, bool | None]]:
    runs, rows = results["runs"], []
    ours = run_of(runs, SERVICE, SAMPLE_1, 64)
    rows.append(_versus("/sample n=1 JSON at c=64 ≥ 1.5× mosec's best", ours,
                        best_of(runs, (MOSEC_1, MOSEC_2), SAMPLE_1, 64), 1.5))  # fmt: skip
    rows.append(_versus("/sample n=1 JSON at c=64 ≥ 3× the lean naive app", ours, run_of(runs, NAIVE, SAMPLE_1, 64), 3))
    rows.append(_versus("OIP infer on the decoder (n=1, JSON) at c=64 ≥ 3× MLServer", run_of(runs, SERVICE, OIP_1, 64),
                        run_of(runs, MLSERVER, OIP_1, 64), 3))  # fmt: skip
    rows.append(_versus("/sample n=1 at c=64: default workers ≥ 1.6× one worker", ours,
                        run_of(runs, ONE_WORKER, SAMPLE_1, 64), 1.6))  # fmt: skip
    for traced in (TRACED_1, TRACED_ALL):  # what tracing costs: the traced run ÷ the untraced one (tracing off)
        name = f"/sample n=1 at c=64, {traced.split(', ', 1)[1]}, ÷ tracing off"
        rows.append(_versus(name, run_of(runs, traced, SAMPLE_1, 64), ours, None))
    for scenario in dict.fromkeys(r["scenario"] for r in runs if r["peer"] == SERVICE):
        if scenario not in (SAMPLE_1, OIP_1):
            name = f"{scenario} at c=64: default workers no slower than one (≥ 0.95×, the noise)"
            ours_here, one = run_of(runs, SERVICE, scenario, 64), run_of(runs, ONE_WORKER, scenario, 64)
            rows.append(_versus(name, ours_here, one, 0.95))
    decode = [r for r in runs if r["peer"] == SERVICE and r["scenario"] == DECODE_256]
    floor = results["inprocess"].get(DECODE_256)
    if decode and floor:
        best = max(decode, key=lambda r: r["rows_per_s"])
        value = best["rows_per_s"] / floor
        rows.append(
            (
                "/decode 256 NPY ≥ 0.3× in-process onnxruntime rows/s",
                f"{value:.2f}× ({best['rows_per_s']:.0f} vs {floor:.0f} rows/s, c={best['connections']})",
                value >= 0.3,
            )
        )
    for r in (r for r in runs if r["peer"] == SERVICE and r["connections"] == 64):
        value = r["p99_us"] / r["p50_us"]
        rows.append(
            (
                f"p99 ≤ 3× p50 at c=64: {r['scenario']}",
                f"{value:.2f}× ({r['p99_us'] / 1e3:.1f} / {r['p50_us'] / 1e3:.1f} ms)",
                value <= 3,
            )
        )
    grpc = {(r["transport"], r["rows"], r["connections"]): r for r in results.get("grpc", [])}
    if ("grpc", 1, 64) in grpc and ("http", 1, 64) in grpc:
        for key in (("grpc", 1, 64), ("http", 1, 64), ("grpc floor", 1, 64)):
            if key in grpc:
                grpc[key]["peer"] = f"{key[0]} ({'h2load' if key[0] != 'http' else 'h2load --h1'})"
        rows.append(_versus("gRPC ModelInfer (1 row, raw) at c=64 ≥ 1.0× HTTP OIP infer (JSON), h2load",
                            grpc[("grpc", 1, 64)], grpc[("http", 1, 64)], 1.0))  # fmt: skip
        rows.append(_versus("gRPC ModelInfer ÷ the grpc.aio floor (constant answer), c=64",
                            grpc[("grpc", 1, 64)], grpc.get(("grpc floor", 1, 64)), None))  # fmt: skip
    errors = sum(r["errors"] for r in runs if r["peer"] == SERVICE)
    rows.append(("no errors at any concurrency (vae-serve)", f"{errors} errors", errors == 0))
    if results.get("cold_start_s"):
        median = statistics.median(results["cold_start_s"])
        rows.append(
            (
                "cold start (spawn → ready) ≤ 2 s on CPU",
                f"{median:.2f} s median of {len(results['cold_start_s'])}",
                median <= 2,
            )
        )
    if results.get("overload"):
        o = results["overload"]
        offered = f"{o['factor']:g}× capacity ({o['rate']:.0f} req/s offered, {o['capacity_rps']:.1f} closed-loop)"
        rows.append(
            (f"overload, open loop at {offered}: goodput ≥ 90 % of capacity", f"{100 * o['goodput_share']:.0f} %",
             o["goodput_share"] >= 0.9)
        )  # fmt: skip
        rows.append(
            ("overload: no error other than 503", f"{o['errors_other_than_503']} ({o['outcomes']})",
             o["errors_other_than_503"] == 0)
        )  # fmt: skip
        p99 = o["p99_ok_ms"]
        rows.append(
            (f"overload: p99 of the 200s within the deadline ({o['deadline_ms']:g} ms)",
             "no 200s" if p99 is None else f"{p99:.0f} ms (p50 {o['p50_ok_ms']:.0f} ms)",
             p99 is not None and p99 <= o["deadline_ms"])
        )  # fmt: skip
        no_504 = o["outcomes"].get("504", 0)
        rows.append(("overload: no 504s", f"{no_504} of {o['requests']}", no_504 == 0))
    if results.get("burst"):
        b = results["burst"]
        late = b["outcomes"].get("504", 0)
        rows.append(
            (f"burst of {b['clients']} with a {b['deadline_ms']:g} ms deadline: at most 1 % 504s",
             f"{late} ({b['outcomes']})", late <= 0.01 * b["requests"])
        )  # fmt: skip
        slowest, shed_p99 = b["max_ok_ms"], b["p99_503_ms"] or 0
        rows.append(
            ("burst: every 200 within the deadline, every 503 with Retry-After",
             "no 200s" if slowest is None else f"slowest 200 {slowest:.0f} ms; p99 of 503s {shed_p99:.0f} ms",
             slowest is not None and slowest <= b["deadline_ms"] and b["all_503_say_retry_after"])
        )  # fmt: skip
    if results.get("soak"):
        points = results["soak"]["points"]
        last, settled = points[-1], points[1] if len(points) > 2 else points[0]
        growth = max(b - a for a, b in zip(settled["worker_rss_mb"], last["worker_rss_mb"]))
        rows.append(
            (
                f"RSS per worker ≤ 300 MB after {last['requests']} requests, not growing",
                f"{max(last['worker_rss_mb']):.0f} MB at most; {growth:+.1f} MB at most from {settled['requests']} "
                f"to {last['requests']} requests",
                max(last["worker_rss_mb"]) <= 300 and growth <= 10,
            )
        )
    return rows


def markdown(results: dict) -> str:
    m, runs = results["machine"], results["runs"]
    lines = [
        "# Benchmark results",
        "",
        f"{m['date']} · {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB · Python {m['python']}, "
        f"onnxruntime {m['onnxruntime']} (CPU) · model `{results['model']}` · {results['duration_s']:g} s per point, "
        f"wrk on the same machine · whole run {results.get('wall_s', 0) / 60:.1f} min",
        "",
        "## Targets",
        "",
        "| target | measured | met |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {value} | {'n/a' if ok is None else ('yes' if ok else '**no**')} |"
        for name, value, ok in targets(results)
    ]
    for scenario in dict.fromkeys(r["scenario"] for r in runs):
        floor = results["inprocess"].get(scenario)
        lines += [
            "",
            f"## {scenario}",
            "",
            f"In-process onnxruntime at this batch size: {floor:,.0f} rows/s." if floor else "",
            "",
            "| peer | body | c | req/s | rows/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in (r for r in runs if r["scenario"] == scenario):
            lines.append(
                f"| {r['peer']} | {r['format']} | {r['connections']} | {r['rps']:,.0f} | {r['rows_per_s']:,.0f} | "
                f"{r['p50_us'] / 1e3:.1f} | {r['p99_us'] / 1e3:.1f} | {r['errors']} |"
            )
        lines += [
            "",
            "vae-serve ÷ peer (req/s at the same concurrency; in-process: rows/s):",
            "",
            "| c | ÷ 1 worker | ÷ no batching | ÷ naive | ÷ mosec's best | ÷ MLServer | ÷ LitServe | ÷ in-process |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in results["concurrency"]:
            ours = run_of(runs, SERVICE, scenario, c)
            if ours is None:
                continue
            cells = [fmt(ratio(ours, run_of(runs, peer, scenario, c))) for peer in (ONE_WORKER, NO_BATCHING, NAIVE)]
            cells.append(fmt(ratio(ours, best_of(runs, (MOSEC_1, MOSEC_2), scenario, c))))
            cells += [fmt(ratio(ours, run_of(runs, peer, scenario, c))) for peer in (MLSERVER, LITSERVE)]
            cells.append(fmt(ours["rows_per_s"] / floor if floor else None))
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if results.get("grpc"):
        lines += [
            "",
            "## OIP over gRPC and HTTP (decoder; h2load on the same cores: gRPC raw contents over HTTP/2 in",
            "connections of 8 streams, HTTP OIP infer with a JSON body over HTTP/1.1; the grpc.aio floor answers",
            "a constant image)",
            "",
            "| transport | rows / request | c | req/s | rows/s | p50 ms | p99 ms | errors |",
            "|---|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['transport']} | {r['rows']} | {r['connections']} | {r['rps']:,.0f} | {r['rows_per_s']:,.0f} "
            f"| {r['p50_us'] / 1e3:.1f} | {r['p99_us'] / 1e3:.1f} | {r['errors']} |"
            for r in results["grpc"]
        ]
    if results.get("soak"):
        lines += [
            "",
            "## Memory soak (vae-serve, after one round of every scenario, then /sample n=1 at c=64)",
            "",
            "| requests | RSS MB, all processes | RSS MB per worker |",
            "|---|---|---|",
        ]
        lines += [
            f"| {p['requests']:,} | {p['rss_mb']:.0f} | {', '.join(f'{w:.0f}' for w in p['worker_rss_mb'])} |"
            for p in results["soak"]["points"]
        ]
    if results.get("cold_start_s"):
        lines += [
            "",
            "Cold start (process spawn → `/health/ready` 200): "
            + ", ".join(f"{t:.2f} s" for t in results["cold_start_s"]),
        ]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = results["runs"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in runs))
    columns = min(3, len(scenarios))
    figure, axes = plt.subplots(
        (len(scenarios) + columns - 1) // columns,
        columns,
        figsize=(5 * columns, 3.8 * ((len(scenarios) + columns - 1) // columns)),
        squeeze=False,
    )
    for ax, scenario in zip(axes.flat, scenarios):
        for peer in dict.fromkeys(r["peer"] for r in runs):
            points = sorted(
                (r["connections"], r["rows_per_s"]) for r in runs if r["peer"] == peer and r["scenario"] == scenario
            )
            if points:
                ax.plot(*zip(*points), marker="o", label=peer, linewidth=2.5 if peer == SERVICE else 1.2)
        if floor := results["inprocess"].get(scenario):
            ax.axhline(floor, linestyle="--", color="grey", label="onnxruntime in-process")
        ax.set(title=scenario, xscale="log", xlabel="concurrent connections", ylabel="rows/s")
        ax.set_xticks(results["concurrency"], [str(c) for c in results["concurrency"]])
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(scenarios) :]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    figure.suptitle(f"throughput vs concurrency — {results['machine']['cores']} cores, {results['machine']['date']}")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def write_report(results: dict, out: Path) -> None:
    (out / "results.md").write_text(markdown(results))
    plot(results, out / "throughput.png")
