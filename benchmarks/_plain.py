"""Baselines: plain temporalio, a workflow running one activity on a warm worker in this process, on a
fresh task queue of the same Temporal server the Multinode figures are measured on."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

WARM_UP_RUNS = 2
HEARTBEAT_EVERY_SECONDS = 0.1
TICK_EVERY_SECONDS = 0.7
"""As the Multinode ticker: a new value this often."""
# The SDK sends heartbeats at most every min(0.8 x heartbeat timeout, max_heartbeat_throttle_interval)
# (default cap 60 s), and holds back a heartbeat recorded inside that window until it ends. Both
# cancellation (it comes back in a heartbeat's response) and heartbeat details (progress) wait for that
# send, so a small interval makes the baseline show the server's path rather than the SDK's throttle.
HEARTBEAT_THROTTLE = timedelta(seconds=HEARTBEAT_EVERY_SECONDS)

_cancel_seen: dict[str, float] = {}
"""Key -> when the activity given that key saw its cancellation (the worker runs in this process)."""


@activity.defn
async def ran_at() -> float:
    return time.time()


@activity.defn
async def echo(i: int) -> int:
    return i


@activity.defn
async def heartbeat_until_cancelled(key: str) -> None:
    try:
        while True:
            activity.heartbeat()
            await asyncio.sleep(HEARTBEAT_EVERY_SECONDS)
    except asyncio.CancelledError:
        _cancel_seen[key] = time.time()
        raise


@activity.defn
async def ticker(n: int) -> None:
    for i in range(n):
        activity.heartbeat({"i": i, "at": time.time()})
        await asyncio.sleep(TICK_EVERY_SECONDS)


@workflow.defn
class OneActivity:
    """Runs the named activity once and returns its result."""

    @workflow.run
    async def run(self, name: str, args: list[Any]) -> Any:
        return await workflow.execute_activity(
            name,
            args=args,
            start_to_close_timeout=timedelta(minutes=5),
            heartbeat_timeout=timedelta(seconds=10),
            # As a Multinode invocation, which ends once its code has stopped: the cancellation
            # reaches the activity in a heartbeat's response, not as "workflow gone" after it closed.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )


@asynccontextmanager
async def plain_worker(address: str) -> AsyncIterator[tuple[Client, str]]:
    """A worker on a fresh task queue; yields the client and the queue."""
    client = await Client.connect(address)
    queue = f"plain-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=queue,
        workflows=[OneActivity],
        activities=[ran_at, echo, heartbeat_until_cancelled, ticker],
        max_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
        default_heartbeat_throttle_interval=HEARTBEAT_THROTTLE,
    ):
        yield client, queue


async def _start(client: Client, queue: str, name: str, *args: Any) -> Any:
    return await client.start_workflow(
        OneActivity.run, args=[name, list(args)], id=f"plain-{uuid.uuid4()}", task_queue=queue
    )


@dataclass
class StartSamples:
    """Seconds from start to the first line of code and to the result, and the workflow ids, per run."""

    first_line: list[float] = field(default_factory=list)
    result: list[float] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    ran_at: list[float] = field(default_factory=list)
    began: list[float] = field(default_factory=list)


async def start_latency(address: str, runs: int) -> StartSamples:
    samples = StartSamples()
    async with plain_worker(address) as (client, queue):
        for i in range(runs + WARM_UP_RUNS):
            began = time.time()
            handle = await _start(client, queue, "ran_at")
            at = await handle.result()
            done = time.time()
            if i >= WARM_UP_RUNS:
                samples.first_line.append(at - began)
                samples.result.append(done - began)
                samples.ids.append(handle.id)
                samples.ran_at.append(at)
                samples.began.append(began)
    return samples


async def throughput(address: str, count: int) -> float:
    """Seconds from the first start to the last result of ``count`` workflows started at once."""
    async with plain_worker(address) as (client, queue):
        await (await _start(client, queue, "echo", -1)).result()  # warm
        began = time.monotonic()
        handles = await asyncio.gather(*(_start(client, queue, "echo", i) for i in range(count)))
        results = await asyncio.gather(*(h.result() for h in handles))
        elapsed = time.monotonic() - began
    assert results == list(range(count))
    return elapsed


async def cancel_latency(address: str, runs: int) -> list[float]:
    """Seconds from cancelling the workflow to its heartbeating activity seeing CancelledError."""
    latencies = []
    async with plain_worker(address) as (client, queue):
        for i in range(runs + WARM_UP_RUNS):
            key = uuid.uuid4().hex
            handle = await _start(client, queue, "heartbeat_until_cancelled", key)
            while True:  # until the activity runs
                description = await handle.describe()
                if description.raw_description.pending_activities:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)  # as for Multinode: let it settle into its loop
            began = time.time()
            await handle.cancel()
            while key not in _cancel_seen:
                await asyncio.sleep(0.002)
            if i >= WARM_UP_RUNS:
                latencies.append(_cancel_seen.pop(key) - began)
    return latencies


async def progress_latency(address: str, yields: int) -> list[float]:
    """For each heartbeat value, when ``describe()`` first showed it minus when it was recorded."""
    seen: dict[int, float] = {}
    async with plain_worker(address) as (client, queue):
        handle = await _start(client, queue, "ticker", yields)
        converter = client.data_converter.payload_converter
        while True:
            description = await handle.describe()
            now = time.time()
            for pending in description.raw_description.pending_activities:
                if pending.heartbeat_details.payloads:
                    value = converter.from_payloads(list(pending.heartbeat_details.payloads))[0]
                    seen.setdefault(value["i"], now - value["at"])
            if description.close_time is not None:
                break
            await asyncio.sleep(0.01)
    return list(seen.values())
