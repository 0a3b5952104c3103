"""Every Multinode benchmark figure beside its plain-Temporal baseline, measured in one run on one server.

    .venv/bin/python benchmarks/bench.py [--runs 50] [--throughput 500] [--pending 2000]
                                         [--skip memory,throughput,...] [--json]

It starts its own `mn dev` (free ports, temporary MULTINODE_HOME) and stops it, with every process it
started, at the end, also on Ctrl-C or error. Baselines are plain temporalio: a workflow running one
activity on a warm worker in this process, on a fresh task queue of the same server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
from datetime import datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from temporalio.client import Client

sys.path.insert(0, str(Path(__file__).parent))
import _figures  # noqa: E402
import _plain  # noqa: E402
from _history import Step, as_json, breakdown, render  # noqa: E402
from _stack import Stack, percentile, stack_with_project  # noqa: E402

FIGURES = ("start", "breakdown", "cancel", "progress", "throughput", "memory")
CANCEL_RUNS = 10
PROGRESS_YIELDS = 20


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def latency(seconds: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(seconds) * 1000, 1),
        "p95": round(percentile(seconds, 0.95), 1),
        "n": len(seconds),
    }


def pair(multinode: list[float], baseline: list[float]) -> dict[str, Any]:
    return {"multinode": latency(multinode), "baseline": latency(baseline)}


def median_index(values: list[float]) -> int:
    return sorted(range(len(values)), key=values.__getitem__)[len(values) // 2]


async def _start_figures(stack: Stack, client: Client, runs: int, report: dict[str, Any], with_breakdown: bool) -> None:
    log(f"start latency: {runs} no-ops after {_plain.WARM_UP_RUNS} warm-up runs")
    mn = await _figures.start_latency(runs)
    base = await _plain.start_latency(stack.address, runs)
    report["figures"]["start_to_first_line_ms"] = pair(mn.first_line, base.first_line)
    report["figures"]["start_to_result_ms"] = pair(mn.result, base.result)
    if not with_breakdown:
        return
    report["breakdowns"]["multinode"] = await _median_breakdown(client, mn, ".start called", "first line of user code")
    report["breakdowns"]["baseline"] = await _median_breakdown(
        client, base, "start_workflow called", "first line of activity code"
    )


async def _median_breakdown(client: Client, samples: Any, began: str, first_line: str) -> dict[str, Any]:
    """The history breakdown of the median-latency run among ``samples``, with the client's own marks."""
    i = median_index(samples.result)
    marks = {
        began: samples.began[i],
        first_line: samples.ran_at[i],
        "result received": samples.began[i] + samples.result[i],
    }
    return {"workflow_id": samples.ids[i], "events": await breakdown(client, samples.ids[i], marks)}


async def measure(stack: Stack, args: argparse.Namespace, report: dict[str, Any]) -> None:
    figures: dict[str, Any] = report["figures"]
    client = await Client.connect(stack.address)
    if "start" not in args.skip:
        await _start_figures(stack, client, args.runs, report, "breakdown" not in args.skip)
    if "cancel" not in args.skip:
        log(f"cancel latency: {CANCEL_RUNS} runs")
        mn_cancel = await _figures.cancel_latency(stack.scratch, CANCEL_RUNS)
        figures["cancel_ms"] = pair(mn_cancel, await _plain.cancel_latency(stack.address, CANCEL_RUNS))
    if "progress" not in args.skip:
        log(f"progress latency: {PROGRESS_YIELDS} values, 0.7 s apart")
        mn_progress = await _figures.progress_latency(PROGRESS_YIELDS)
        figures["progress_ms"] = pair(mn_progress, await _plain.progress_latency(stack.address, PROGRESS_YIELDS))
    if "throughput" not in args.skip:
        n = args.throughput
        log(f"throughput: {n} no-ops, max_concurrency=100")
        mn_wall = await _figures.throughput(n)
        base_wall = await _plain.throughput(stack.address, n)
        figures["throughput"] = {
            "count": n,
            "multinode": {"wall_ms": round(mn_wall * 1000), "per_second": round(n / mn_wall, 1)},
            "baseline": {"wall_ms": round(base_wall * 1000), "per_second": round(n / base_wall, 1)},
        }
    if "memory" not in args.skip:
        log(f"memory: {args.pending} pending invocations behind one that blocks (max_concurrency=1)")
        mem = await _figures.memory(stack, args.pending, log)
        rounded = {
            k: {name: round(mb, 1) for name, mb in v.items()}
            for k, v in (("idle", mem.idle_mb), ("loaded", mem.loaded_mb))
        }
        figures["memory"] = {
            "pending": mem.pending,
            "idle_mb": rounded["idle"],
            "pending_mb": rounded["loaded"],
            "start_ms": round(mem.start_seconds * 1000),
            "drain_ms": round(mem.drain_seconds * 1000),
            "drain_per_second": round(mem.pending / mem.drain_seconds, 2),
        }


Row = tuple[str, str, str, str]


def _row(label: str, multinode: float, baseline: float | None, fmt: str) -> Row:
    if baseline is None:
        return (label, fmt.format(multinode), "-", "-")
    ratio = f"{multinode / baseline:.1f}x" if baseline else "-"
    return (label, fmt.format(multinode), fmt.format(baseline), ratio)


def table(figures: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    labels = {
        "start_to_first_line_ms": ".start -> first line of user code (baseline: -> activity runs)",
        "start_to_result_ms": ".start -> result",
        "cancel_ms": ".cancel() -> InvocationCancelledError (baseline: activity CancelledError)",
        "progress_ms": "yield -> visible via .get() (baseline: heartbeat via describe)",
    }
    for key, label in labels.items():
        if key in figures:
            mn, base = figures[key]["multinode"], figures[key]["baseline"]
            rows += [_row(f"{label}, {stat}", mn[stat], base[stat], "{:.1f} ms") for stat in ("median", "p95")]
    if "throughput" in figures:
        t = figures["throughput"]
        mn, base = t["multinode"], t["baseline"]
        label = f"{t['count']} no-ops at once (max_concurrency=100), first start -> last result"
        rows.append(_row(label, mn["wall_ms"] / 1000, base["wall_ms"] / 1000, "{:.1f} s"))
        rows.append(_row("  invocations per second", mn["per_second"], base["per_second"], "{:.1f}/s"))
    if "memory" in figures:
        m = figures["memory"]
        n = m["pending"]
        parts = {
            "worker": "control-plane worker (mn dev)",
            "containers": "other descendants: containers, pool",
            "server": "Temporal server",
        }
        for part, label in parts.items():
            rows.append(
                _row(
                    f"RSS, {label}: {n} pending (baseline: idle)",
                    m["pending_mb"][part],
                    m["idle_mb"][part],
                    "{:.0f} MB",
                )
            )
        rows.append(_row(f"start {n} invocations (max_concurrency=1)", m["start_ms"] / 1000, None, "{:.1f} s"))
        rows.append(_row(f"release -> all {n} final, one at a time", m["drain_ms"] / 1000, None, "{:.1f} s"))
        rows.append(_row("  invocations per second", m["drain_per_second"], None, "{:.2f}/s"))
    return rows


def render_table(report: dict[str, Any]) -> str:
    rows = [("figure", "multinode", "baseline", "ratio"), *table(report["figures"])]
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for n, row in enumerate(rows):
        lines.append(f"{row[0]:<{widths[0]}} | {row[1]:>{widths[1]}} | {row[2]:>{widths[2]}} | {row[3]:>{widths[3]}}")
        if n == 0:
            lines.append("-+-".join("-" * w for w in widths))
    lines.append(
        "ratio = multinode / baseline. Baseline: plain temporalio workflow + 1 activity, warm worker, same server."
    )
    return "\n".join(lines)


def header() -> dict[str, Any]:
    return {
        "date": datetime.now().astimezone().isoformat(timespec="seconds"),
        "cores": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "temporalio": version("temporalio"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=50, help="sequential no-ops for the start latencies")
    parser.add_argument("--throughput", type=int, default=500, help="no-ops started at once")
    parser.add_argument("--pending", type=int, default=2000, help="pending invocations for the memory figure")
    parser.add_argument("--skip", default="", help=f"comma-separated figures to skip: {','.join(FIGURES)}")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    args.skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    unknown = args.skip - set(FIGURES)
    if unknown:
        parser.error(f"unknown figure(s) to skip: {', '.join(sorted(unknown))}; choose from {', '.join(FIGURES)}")

    report: dict[str, Any] = {
        **header(),
        "options": {
            "runs": args.runs,
            "throughput": args.throughput,
            "pending": args.pending,
            "skip": sorted(args.skip),
        },
        "figures": {},
        "breakdowns": {},
    }
    log("starting mn dev and registering the benchmark project")
    with stack_with_project(_figures.TASKS, _figures.PROJECT) as stack:
        asyncio.run(measure(stack, args, report))
    breakdowns: dict[str, dict[str, Any]] = report["breakdowns"]
    if args.json:
        for entry in breakdowns.values():
            entry["events"] = as_json(entry["events"])
        print(json.dumps(report, indent=2))
        return
    h = report
    print(f"{h['date']}  cores: {h['cores']}  load: {h['load_average_1m']}  ", end="")
    print(f"Python {h['python']}  temporalio {h['temporalio']}")
    print()
    print(render_table(report))
    titles = {
        "multinode": "Multinode no-op, median of .start -> result",
        "baseline": "plain workflow + 1 activity, median",
    }
    for key, entry in breakdowns.items():
        steps: list[Step] = entry["events"]
        print()
        print(render(f"{titles[key]}: {entry['workflow_id']}", steps))


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; the benchmark stack is stopped")
