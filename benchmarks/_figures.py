"""Multinode figures, measured against a stack from ``_stack`` with ``TASKS`` registered as project "bench"."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _plain import WARM_UP_RUNS, StartSamples
from _stack import Stack

from multinode import DeployedFunction, get_deployed_function

PROJECT = "bench"
TASKS = """
import time
from pathlib import Path

from multinode import Multinode
from multinode.errors import InvocationCancelledError

mn = Multinode()


@mn.function()
def noop():
    return time.time()


@mn.function(max_concurrency=100)
def noop_many(i):
    return i


@mn.function()
def sleeper(marker, raised_at):
    Path(marker).write_text("running")
    try:
        time.sleep(3600)
    except InvocationCancelledError:
        Path(raised_at).write_text(repr(time.time()))


@mn.function()
def ticker(n):
    for i in range(n):
        yield {"i": i, "at": time.time()}
        time.sleep(0.7)


@mn.function(max_concurrency=1)
def hold(running, release):
    Path(running).write_text("running")
    while not Path(release).exists():
        time.sleep(0.05)
"""


def function(name: str) -> DeployedFunction:
    return get_deployed_function(PROJECT, name)


async def wait_for_text(path: Path, timeout: float = 120) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was not written within {timeout} s")
        await asyncio.sleep(0.002)
    return path.read_text()


async def start_latency(runs: int) -> StartSamples:
    fn = function("noop")
    samples = StartSamples()
    for i in range(runs + WARM_UP_RUNS):
        began = time.time()
        invocation_id = await fn.start_async()
        at = await fn.await_result_async(invocation_id)
        done = time.time()
        if i >= WARM_UP_RUNS:
            samples.first_line.append(at - began)
            samples.result.append(done - began)
            samples.ids.append(invocation_id)
            samples.ran_at.append(at)
            samples.began.append(began)
    return samples


async def throughput(count: int) -> float:
    """Seconds from the first start to the last result of ``count`` no-ops started by ``.map``."""
    fn = function("noop_many")
    began = time.monotonic()
    results = [r async for r in fn.map_async(range(count))]
    elapsed = time.monotonic() - began
    assert results == list(range(count))
    return elapsed


async def cancel_latency(scratch: Path, runs: int) -> list[float]:
    """Seconds from ``.cancel()`` to ``InvocationCancelledError`` raised in the user code."""
    fn = function("sleeper")
    latencies = []
    for i in range(runs + WARM_UP_RUNS):
        marker, raised = scratch / f"cancel-{i}-running", scratch / f"cancel-{i}-raised"
        invocation_id = await fn.start_async(str(marker), str(raised))
        await wait_for_text(marker)
        await asyncio.sleep(0.2)  # let it settle into the sleep
        began = time.time()
        await fn.cancel_async(invocation_id)
        raised_at = float(await wait_for_text(raised))
        if i >= WARM_UP_RUNS:
            latencies.append(raised_at - began)
    return latencies


async def progress_latency(yields: int) -> list[float]:
    """For each yielded value, when ``.get()`` first showed it minus when it was yielded; the values are
    0.7 s apart and ``.get()`` is polled as fast as it answers."""
    fn = function("ticker")
    invocation_id = await fn.start_async(yields)
    seen: dict[int, float] = {}
    while True:
        invocation = await fn.get_async(invocation_id)
        now = time.time()
        value = invocation.result
        if isinstance(value, dict) and "i" in value:
            seen.setdefault(value["i"], now - value["at"])
        if invocation.status.is_final:
            break
        await asyncio.sleep(0.01)
    return list(seen.values())


@dataclass
class MemoryFigures:
    pending: int
    idle_mb: dict[str, float]
    loaded_mb: dict[str, float]
    start_seconds: float
    drain_seconds: float


async def _settled(stack: Stack, timeout: float = 120) -> None:
    """Until the control-plane worker has caught up with the burst (under 10% of a core for a second)."""
    deadline = time.monotonic() + timeout
    before = stack.worker_cpu_seconds()
    while time.monotonic() < deadline:
        await asyncio.sleep(1)
        now = stack.worker_cpu_seconds()
        if now - before < 0.1:
            return
        before = now


async def memory(stack: Stack, pending: int, progress: Callable[[str], Any] = print) -> MemoryFigures:
    """RSS with ``pending`` invocations waiting behind one that blocks (max_concurrency=1), then the time
    for all of them to run, one at a time, once it is released."""
    fn = function("hold")
    running, release = stack.scratch / "hold-running", stack.scratch / "hold-release"
    await _settled(stack)
    idle = stack.rss_mb()
    gate = asyncio.Semaphore(32)  # as `.map`: a bounded number of starts in flight

    async def start() -> str:
        async with gate:
            return await fn.start_async(str(running), str(release))

    began = time.monotonic()
    ids = await asyncio.gather(*(start() for _ in range(pending)))
    start_seconds = time.monotonic() - began
    progress(f"  started {pending} in {start_seconds:.1f} s; waiting for the control plane to settle")
    await wait_for_text(running)
    await _settled(stack)
    loaded = stack.rss_mb()
    progress("  released; draining one at a time")
    began = time.monotonic()
    release.write_text("go")
    for invocation_id in ids:
        await fn.await_result_async(invocation_id)
    drain_seconds = time.monotonic() - began
    return MemoryFigures(pending, idle, loaded, start_seconds, drain_seconds)
