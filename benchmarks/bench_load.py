"""Load: rounds of N no-op invocations submitted at once (max_concurrency=100), with the memory of the
control plane and of the Temporal server sampled throughout, and the worker's log checked for errors.

    .venv/bin/python benchmarks/bench_load.py [--invocations 1000] [--rounds 3] [--interval 0.5] [--json]

It starts its own `mn dev` (free ports, temporary MULTINODE_HOME) and stops it, with every process it
started, at the end, also on Ctrl-C or error. Each round starts its invocations with one `.map` (the SDK's
bulk start) and waits for every result; `.map` returns a result only for a SUCCEEDED invocation (any other
end raises), and Temporal's visibility is asked how many SUCCEEDED too.

Every ``--interval`` seconds a thread samples, over /proc, the RSS (and PSS) of
  * the control plane: `mn dev` and its descendants, except the two below;
  * the Temporal server: the `temporal server start-dev` process and its descendants;
  * containers: the templates (mn-template) and what they fork (mn-supervisor, mn-agent, mn-user).
Per round it prints the wall time, invocations per second, the peak of each, and each once idle again
(containers ended, the worker's CPU settled). Then the growth of the idle control plane from the first
round to the last, per invocation: Python keeps memory it once used, so the first round's burst may
stay, but a flat control plane adds nothing per round after that (near 0 bytes/invocation). The same
for the server, with clues: anonymous vs file-backed RSS, the size of its database, its mutable-state
cache (from its /metrics) and, run with GODEBUG=gctrace=1 (the server inherits it and writes a line per
garbage collection to its log), its live Go heap after the last collection.

Last, the ERROR and WARN lines of the control-plane worker's log (`mn dev`'s output), of the server's
and of the templates'. ``--keep-logs`` copies them (and a /metrics snapshot) out of the stack, which is
removed at the end; they are kept anyway when the worker's log has errors or a round failed. The exit
status is 1 when an invocation did not succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client

sys.path.insert(0, str(Path(__file__).parent))
import _figures  # noqa: E402
from _stack import PAGE_BYTES, Stack, cpu_seconds, process_children, stack_with_project  # noqa: E402
from bench import header, log  # noqa: E402

from multinode._protocol import INVOCATION_WORKFLOW, SA_FUNCTION, SA_PROJECT, SA_STATUS  # noqa: E402
from multinode._settings import MultinodeSettings  # noqa: E402

FUNCTION = "noop_many"
"""The benchmark project's no-op with max_concurrency=100."""
MAX_CONCURRENCY = 100
PARTS = ("control_plane", "server", "containers")
CONTAINER_NAMES = frozenset({"mn-template", "mn-supervisor", "mn-agent", "mn-user"})
"""Process names (/proc/PID/comm) of the local provisioner's processes."""
IDLE_SAMPLES = 6
"""Samples, ``--interval`` apart, whose median is a round's idle figure."""
IDLE_TIMEOUT_SECONDS = 300.0
ERROR_LINE = re.compile(
    r"Traceback \(most recent call last\)|\bERROR\b|\bCRITICAL\b|^panic:|^[\w.]*(Error|Exception)(:|$)|"
    r"Failed (activation|completing)|level=error|\"level\": ?\"error\""
)
"""A line at ERROR level, case-sensitively (`error=` in a warning is a field): in the worker's log the Rust
core's `ERROR`, a Python traceback or exception line (Python's last-resort handler prints a record's
message alone, without its level), the SDK's failed workflow activations; in the server's `level=ERROR`."""
WARNING_LINE = re.compile(r"\bWARN(ING)?\b|level=warn")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
GC_TRACE = re.compile(r"^gc \d+ @.*? \d+->\d+->(\d+) MB", re.MULTILINE)
"""A GODEBUG=gctrace=1 line: heap at start -> at end -> live after the collection."""
TIMESTAMP = re.compile(r"^(time=)?\S*\d{4}-\d\d-\d\dT[\d:.]+Z?\s*")
SERVER_GAUGES = {
    'cache_usage{cache_type="mutablestate",service_name="history"}': "mutable_state_cache_entries",
    'cache_size{cache_type="mutablestate",service_name="history"}': "mutable_state_cache_capacity",
    'cache_usage{cache_type="events",service_name="history"}': "events_cache_usage",
}
"""From the server's Prometheus endpoint: its history service's caches (the mutable-state cache holds closed
workflows too, until evicted). Its Go memory gauges are not used: the server reports them once, at start."""


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _comm(pid: int) -> str:
    return _read(f"/proc/{pid}/comm").strip()


def _argv(pid: int) -> list[bytes]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return []


def is_server(pid: int) -> bool:
    """`temporal server start-dev`, by its command line."""
    argv = _argv(pid)
    return bool(argv) and Path(argv[0].decode(errors="replace")).name == "temporal" and b"start-dev" in argv


def is_container(pid: int) -> bool:
    """A template or anything it forked: by name, or by command line before the template names itself."""
    return _comm(pid) in CONTAINER_NAMES or b"multinode._runtime.template" in _argv(pid)


def rss_bytes(pid: int) -> int:
    try:
        return int(_read(f"/proc/{pid}/statm").split()[1]) * PAGE_BYTES
    except (IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int | None:
    """Proportional set size (shared pages divided among their sharers); None if unreadable."""
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return None


def status_value(pid: int, name: str) -> int:
    """A number from /proc/PID/status (sizes are in kB there); 0 if the process is gone."""
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0


def status_field(pid: int, name: str) -> int:
    """A size from /proc/PID/status in bytes, e.g. VmHWM (the process's peak RSS since it started)."""
    return status_value(pid, name) * 1024


def classify(root: int) -> dict[str, list[int]]:
    """``root`` (`mn dev`) and its descendants, by part; a server's or a template's descendants go with it."""
    children = process_children()
    parts: dict[str, list[int]] = {part: [] for part in PARTS}
    parts["control_plane"].append(root)
    todo = [(child, "control_plane") for child in children.get(root, [])]
    while todo:
        pid, part = todo.pop()
        if part == "control_plane":
            if is_server(pid):
                part = "server"
            elif is_container(pid):
                part = "containers"
        parts[part].append(pid)
        todo += [(child, part) for child in children.get(pid, [])]
    return parts


@dataclass
class Sample:
    at: float
    rss: dict[str, int]
    pss: dict[str, int | None]
    """Of the control plane and the server only (containers: many processes, RSS is enough)."""
    supervisors: int
    """mn-supervisor processes: running containers plus the pool's pre-started ones."""
    control_plane_pids: int


def sample(root: int) -> Sample:
    parts = classify(root)
    rss = {part: sum(rss_bytes(pid) for pid in pids) for part, pids in parts.items()}
    pss: dict[str, int | None] = {}
    for part in ("control_plane", "server"):
        values = [pss_bytes(pid) for pid in parts[part]]
        pss[part] = None if not values or None in values else sum(v or 0 for v in values)
    supervisors = sum(1 for pid in parts["containers"] if _comm(pid) == "mn-supervisor")
    return Sample(time.monotonic(), rss, pss, supervisors, len(parts["control_plane"]))


class Sampler(threading.Thread):
    """Samples every ``interval`` seconds until stopped; a thread, so a busy event loop does not delay it."""

    def __init__(self, root: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.root = root
        self.interval = interval
        self.samples: list[Sample] = []
        self._stopped = threading.Event()

    def run(self) -> None:
        while not self._stopped.is_set():
            self.samples.append(sample(self.root))
            self._stopped.wait(self.interval)

    def stop(self) -> list[Sample]:
        self._stopped.set()
        self.join()
        return self.samples


def peaks(samples: list[Sample]) -> dict[str, dict[str, int | None]]:
    out: dict[str, dict[str, int | None]] = {}
    for part in PARTS:
        out[part] = {"rss": max(s.rss[part] for s in samples)}
        if part != "containers":
            pss = [s.pss[part] for s in samples]
            out[part]["pss"] = None if None in pss else max(p or 0 for p in pss)
    return out


def medians(samples: list[Sample]) -> dict[str, dict[str, int | None]]:
    out: dict[str, dict[str, int | None]] = {}
    for part in PARTS:
        out[part] = {"rss": round(statistics.median(s.rss[part] for s in samples))}
        if part != "containers":
            pss = [s.pss[part] for s in samples]
            out[part]["pss"] = None if None in pss else round(statistics.median(p or 0 for p in pss))
    return out


def metrics_url(stack: Stack) -> str | None:
    """The server's Prometheus endpoint, which `temporal server start-dev` prints at start."""
    try:
        found = re.search(r"Temporal Metrics:\s*(\S+)", (stack.home / "temporal.log").read_text(errors="replace"))
    except OSError:
        return None
    return found.group(1) if found else None


def server_gauges(url: str | None) -> dict[str, float]:
    """A few gauges, and how many series the server keeps (each task queue adds its own)."""
    if url is None:
        return {}
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            text = response.read().decode(errors="replace")
    except OSError:
        return {}
    values = {"metric_series": float(sum(1 for line in text.splitlines() if line and not line.startswith("#")))}
    for line in text.splitlines():
        name, _, value = line.rpartition(" ")
        if name in SERVER_GAUGES:
            values[SERVER_GAUGES[name]] = float(value)
    return values


def details(stack: Stack) -> dict[str, Any]:
    """Clues for where memory goes: anonymous vs file-backed RSS, the server's database files, its Go heap."""
    out: dict[str, Any] = {
        "control_plane": {k: status_field(stack.pid, k) for k in ("RssAnon", "RssFile", "VmHWM")},
        "control_plane_threads": status_value(stack.pid, "Threads"),
    }
    server = server_pid(stack.pid)
    if server:
        out["server"] = {k: status_field(server, k) for k in ("RssAnon", "RssFile", "VmHWM")}
    out["db_bytes"] = {p.name: p.stat().st_size for p in stack.home.glob("temporal.db*") if p.is_file()}
    out["server_caches"] = server_gauges(metrics_url(stack))
    collections = GC_TRACE.findall(_read(str(stack.home / "temporal.log")))
    if collections:
        out["server_go_live_heap_bytes"] = int(collections[-1]) * 1_000_000  # gctrace's MB are 10^6 bytes
    return out


def server_pid(root: int) -> int | None:
    return next((pid for pid in classify(root)["server"] if is_server(pid)), None)


async def idle(stack: Stack, interval: float, pool_size: int) -> tuple[dict[str, dict[str, int | None]], float]:
    """Wait until the containers have ended (only the pool's pre-started ones left) and the worker has
    caught up (under 10% of a core for a second); then the median of a few samples, and how long it took."""
    began = time.monotonic()
    deadline = began + IDLE_TIMEOUT_SECONDS
    while sample(stack.pid).supervisors > pool_size and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
    before = stack.worker_cpu_seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        now = stack.worker_cpu_seconds()
        if now - before < 0.1:
            break
        before = now
    waited = time.monotonic() - began
    samples = []
    for _ in range(IDLE_SAMPLES):
        samples.append(sample(stack.pid))
        await asyncio.sleep(interval)
    return medians(samples), waited


async def count_succeeded(client: Client, expected: int, timeout: float = 60) -> int:
    """SUCCEEDED invocations of the function per Temporal's visibility (which lags a little behind)."""
    query = (
        f'WorkflowType = "{INVOCATION_WORKFLOW}" AND {SA_PROJECT} = "{_figures.PROJECT}" '
        f'AND {SA_FUNCTION} = "{FUNCTION}" AND {SA_STATUS} = "SUCCEEDED"'
    )
    deadline = time.monotonic() + timeout
    while True:
        count = (await client.count_workflows(query)).count
        if count >= expected or time.monotonic() > deadline:
            return count
        await asyncio.sleep(1)


@dataclass
class Round:
    number: int
    wall_seconds: float
    results_ok: int
    succeeded_total: int
    peak: dict[str, dict[str, int | None]]
    idle: dict[str, dict[str, int | None]]
    idle_wait_seconds: float
    cpu_seconds: dict[str, float]
    max_supervisors: int
    error: str | None = None
    samples: int = 0
    vm_hwm: dict[str, int] = field(default_factory=dict)
    idle_details: dict[str, Any] = field(default_factory=dict)


async def one_round(
    stack: Stack, client: Client, number: int, n: int, interval: float, pool_size: int, done_before: int
) -> Round:
    fn = _figures.function(FUNCTION)
    server = server_pid(stack.pid)
    cpu_before = {"control_plane": stack.worker_cpu_seconds(), "server": cpu_seconds(server) if server else 0.0}
    sampler = Sampler(stack.pid, interval)
    sampler.start()
    results: list[Any] = []
    error = None
    began = time.monotonic()
    try:
        async for result in fn.map_async(range(n)):
            results.append(result)
    except Exception as exc:  # a failed invocation ends `.map`: report it with the figures
        error = f"{type(exc).__name__}: {str(exc)[:500]}"
    wall = time.monotonic() - began
    samples = sampler.stop()
    cpu = {
        "control_plane": stack.worker_cpu_seconds() - cpu_before["control_plane"],
        "server": (cpu_seconds(server) - cpu_before["server"]) if server else 0.0,
    }
    results_ok = sum(1 for i, result in enumerate(results) if result == i)
    log(f"  round {number}: {len(results)} results in {wall:.1f} s; waiting for idle")
    idle_mb, waited = await idle(stack, interval, pool_size)
    succeeded = await count_succeeded(client, done_before + n)
    hwm = {"control_plane": status_field(stack.pid, "VmHWM")}
    if server:
        hwm["server"] = status_field(server, "VmHWM")
    return Round(
        number=number,
        wall_seconds=wall,
        results_ok=results_ok,
        succeeded_total=succeeded,
        peak=peaks(samples),
        idle=idle_mb,
        idle_wait_seconds=waited,
        cpu_seconds=cpu,
        max_supervisors=max(s.supervisors for s in samples),
        error=error,
        samples=len(samples),
        vm_hwm=hwm,
        idle_details=details(stack),
    )


def scan_log(path: Path, limit: int = 5) -> dict[str, Any]:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        lines = []
    lines = [ANSI.sub("", line) for line in lines]  # the Rust core colours its levels
    errors = [line for line in lines if ERROR_LINE.search(line)]
    warnings = [line for line in lines if WARNING_LINE.search(line) and not ERROR_LINE.search(line)]
    return {
        "path": str(path),
        "lines": len(lines),
        "error_lines": len(errors),
        "warning_lines": len(warnings),
        "first_errors": [line[:300] for line in errors[:limit]],
        "error_kinds": kinds(errors, limit),
        "warning_kinds": kinds(warnings, limit),
    }


def kinds(lines: list[str], limit: int) -> list[tuple[int, str]]:
    """The most frequent messages among ``lines``, with times, ids and numbers left out."""
    counts = Counter(
        re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}\S*|[0-9a-f]{32}|\d+(\.\d+)?", "#", TIMESTAMP.sub("", line))[:140]
        for line in lines
    )
    return [(n, text) for text, n in counts.most_common(limit)]


def keep_logs(stack: Stack) -> Path:
    """Copy the logs out of the stack's home, which is removed at the end."""
    folder = Path(tempfile.mkdtemp(prefix="mn-bench-load-logs-"))
    for name in ("dev.log", "temporal.log"):
        if (stack.home / name).exists():
            shutil.copy(stack.home / name, folder / name)
    for template_log in stack.home.glob("templates/*/template.log"):
        shutil.copy(template_log, folder / f"template-{template_log.parent.name}.log")
    url = metrics_url(stack)
    if url:
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                (folder / "temporal-metrics.txt").write_bytes(response.read())
        except OSError:
            pass
    return folder


async def measure(stack: Stack, args: argparse.Namespace, report: dict[str, Any]) -> None:
    client = await Client.connect(stack.address)
    pool_size = MultinodeSettings.from_env().local_pool_size
    log("waiting for the control plane to be idle before the first round")
    before, _ = await idle(stack, args.interval, pool_size)
    report["idle_before"] = before
    report["idle_before_details"] = details(stack)
    rounds: list[Round] = []
    for number in range(1, args.rounds + 1):
        log(f"round {number}/{args.rounds}: {args.invocations} no-ops at once, max_concurrency={MAX_CONCURRENCY}")
        r = await one_round(
            stack, client, number, args.invocations, args.interval, pool_size, args.invocations * (number - 1)
        )
        rounds.append(r)
        report["rounds"].append(r.__dict__)
        if r.error:
            log(f"  round {number} failed: {r.error}")
            break
    report["worker_log"] = scan_log(stack.worker_log)
    report["server_log"] = scan_log(stack.home / "temporal.log")
    report["template_logs"] = [scan_log(p) for p in sorted(stack.home.glob("templates/*/template.log"))]
    if report["worker_log"]["error_lines"] or any(r.error for r in rounds) or args.keep_logs:
        report["logs_kept_in"] = str(keep_logs(stack))
    report["growth"] = growth(rounds, args.invocations)


def growth(rounds: list[Round], n: int) -> dict[str, Any]:
    """Idle memory after the last round minus after the first, per invocation run in between."""
    if len(rounds) < 2:
        return {}
    first, last = rounds[0].idle, rounds[-1].idle
    invocations = n * (len(rounds) - 1)
    out: dict[str, Any] = {"invocations": invocations}
    for part in PARTS:
        for kind in ("rss", "pss"):
            a, b = first[part].get(kind), last[part].get(kind)
            if a is not None and b is not None:
                out[f"{part}_{kind}_bytes"] = b - a
                out[f"{part}_{kind}_bytes_per_invocation"] = round((b - a) / invocations, 1)
        # With more rounds, the least-squares slope over every round's idle figure: less noisy.
        ys = [r.idle[part]["rss"] or 0 for r in rounds]
        xs = [n * i for i in range(len(rounds))]
        mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mean_x) ** 2 for x in xs
        )
        out[f"{part}_rss_slope_bytes_per_invocation"] = round(slope, 1)
    return out


def mb(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.0f}"


def describe(d: dict[str, Any]) -> str:
    cp, srv, caches = d["control_plane"], d.get("server", {}), d["server_caches"]
    text = f"cp anon {mb(cp['RssAnon'])} file {mb(cp['RssFile'])} MB, {d['control_plane_threads']} threads"
    if srv:
        text += f"; srv anon {mb(srv['RssAnon'])} file {mb(srv['RssFile'])} MB"
    if caches:
        text += (
            f", mutable-state cache {caches.get('mutable_state_cache_entries', 0):.0f}"
            f"/{caches.get('mutable_state_cache_capacity', 0):.0f} entries, {caches['metric_series']:.0f} metric series"
        )
    if "server_go_live_heap_bytes" in d:
        text += f", Go live heap {mb(d['server_go_live_heap_bytes'])} MB"
    db = sum(d["db_bytes"].values())
    return text + f"; temporal.db* {mb(db)} MB"


def render(report: dict[str, Any]) -> str:
    n = report["options"]["invocations"]
    lines = [
        f"{report['date']}  cores: {report['cores']}  load: {report['load_average_1m']}  "
        f"Python {report['python']}  temporalio {report['temporalio']}",
        "",
        f"{n} no-op invocations at once (max_concurrency={MAX_CONCURRENCY}), {len(report['rounds'])} round(s); "
        "MB = 10^6 bytes, RSS (PSS); cp = control plane, srv = Temporal server, "
        "cont. sum = containers' RSS summed (counts shared pages once per process: an upper bound)",
    ]
    b = report["idle_before"]
    lines.append(
        f"idle before:  control plane {mb(b['control_plane']['rss'])} ({mb(b['control_plane']['pss'])})   "
        f"server {mb(b['server']['rss'])} ({mb(b['server']['pss'])})   containers {mb(b['containers']['rss'])}"
    )
    head = (
        "round", "wall s", "inv/s", "ok", "cp peak", "srv peak", "cont. sum", "cp idle", "srv idle",
        "cp CPU ms/inv", "srv CPU ms/inv",
    )  # fmt: skip
    rows = [head]
    for r in report["rounds"]:
        p, i = r["peak"], r["idle"]
        rows.append(
            (
                str(r["number"]),
                f"{r['wall_seconds']:.1f}",
                f"{n / r['wall_seconds']:.1f}",
                f"{r['results_ok']}/{n}",
                f"{mb(p['control_plane']['rss'])} ({mb(p['control_plane']['pss'])})",
                f"{mb(p['server']['rss'])} ({mb(p['server']['pss'])})",
                mb(p["containers"]["rss"]),
                f"{mb(i['control_plane']['rss'])} ({mb(i['control_plane']['pss'])})",
                f"{mb(i['server']['rss'])} ({mb(i['server']['pss'])})",
                f"{r['cpu_seconds']['control_plane'] * 1000 / n:.1f}",
                f"{r['cpu_seconds']['server'] * 1000 / n:.1f}",
            )
        )
    widths = [max(len(row[c]) for row in rows) for c in range(len(head))]
    for k, row in enumerate(rows):
        lines.append(" | ".join(cell.rjust(w) for cell, w in zip(row, widths, strict=True)))
        if k == 0:
            lines.append("-+-".join("-" * w for w in widths))
    for r in report["rounds"]:
        lines.append(
            f"round {r['number']}: SUCCEEDED per visibility (all rounds so far) {r['succeeded_total']}; "
            f"at most {r['max_supervisors']} supervisors; idle after {r['idle_wait_seconds']:.0f} s; "
            f"VmHWM control plane {mb(r['vm_hwm'].get('control_plane'))} MB, server {mb(r['vm_hwm'].get('server'))} MB"
            + (f"; ERROR: {r['error']}" if r["error"] else "")
        )
    for label, d in [("before", report["idle_before_details"])] + [
        (f"after round {r['number']}", r["idle_details"]) for r in report["rounds"]
    ]:
        lines.append(f"idle {label}: {describe(d)}")
    g = report["growth"]
    if g:
        lines.append("")
        lines.append(f"idle growth, round 1 -> round {len(report['rounds'])} ({g['invocations']} invocations between):")
        for part, label in (("control_plane", "control plane"), ("server", "Temporal server")):
            rss, pss = g.get(f"{part}_rss_bytes"), g.get(f"{part}_pss_bytes")
            lines.append(
                f"  {label:<16} RSS {rss / 1e6:+.1f} MB = {g[f'{part}_rss_bytes_per_invocation']:+.0f} bytes/invocation"
                + (
                    f"; PSS {pss / 1e6:+.1f} MB = {g[f'{part}_pss_bytes_per_invocation']:+.0f} bytes/invocation"
                    if pss is not None
                    else ""
                )
                + (
                    f"; RSS slope over all rounds {g[f'{part}_rss_slope_bytes_per_invocation']:+.0f} bytes/invocation"
                    if len(report["rounds"]) > 2
                    else ""
                )
            )
    for key, label in (("worker_log", "control-plane worker log"), ("server_log", "Temporal server log")):
        scan = report[key]
        lines.append("")
        lines.append(
            f"{label}: {scan['error_lines']} error line(s), {scan['warning_lines']} warning line(s) of {scan['lines']}"
        )
        lines += [f"  {n} x {text}" for n, text in scan["error_kinds"]]
        lines += [f"  {n} x {text}" for n, text in scan["warning_kinds"]]
    for scan in report["template_logs"]:
        if scan["error_lines"]:
            lines.append(f"template log {Path(scan['path']).parent.name}: {scan['error_lines']} error line(s)")
            lines += [f"  {line}" for line in scan["first_errors"]]
    if "logs_kept_in" in report:
        lines.append(f"logs kept in {report['logs_kept_in']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invocations", type=int, default=1000, help="no-ops started at once per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, one after the other")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between memory samples")
    parser.add_argument("--keep-logs", action="store_true", help="copy the logs out of the stack (always on errors)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.invocations < 1 or args.rounds < 1 or args.interval <= 0:
        parser.error("--invocations and --rounds must be at least 1, --interval above 0")
    report: dict[str, Any] = {
        **header(),
        "options": {
            "invocations": args.invocations,
            "rounds": args.rounds,
            "interval": args.interval,
            "max_concurrency": MAX_CONCURRENCY,
        },
        "rounds": [],
    }
    log("starting mn dev and registering the benchmark project")
    with stack_with_project(_figures.TASKS, _figures.PROJECT) as stack:
        asyncio.run(measure(stack, args, report))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(render(report))
    failed = any(r["error"] or r["results_ok"] != args.invocations for r in report["rounds"])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit("interrupted; the benchmark stack is stopped")
