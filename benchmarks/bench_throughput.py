"""200 invocations of a no-op function with max_concurrency=100: wall time and invocations per second,
next to the same count of plain Temporal workflows running one activity on the same server.

    .venv/bin/python benchmarks/bench_throughput.py [--count 200]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

sys.path.insert(0, str(Path(__file__).parent))
from _stack import stack_with_project  # noqa: E402

TASKS = """
from multinode import Multinode

mn = Multinode()

@mn.function(max_concurrency=100)
def noop(i):
    return i
"""


@activity.defn
async def plain_activity(i: int) -> int:
    return i


@workflow.defn
class PlainWorkflow:
    @workflow.run
    async def run(self, i: int) -> int:
        return await workflow.execute_activity(plain_activity, i, start_to_close_timeout=timedelta(seconds=60))


async def multinode_run(count: int) -> float:
    from multinode import get_deployed_function

    fn = get_deployed_function("bench", "noop")
    began = time.monotonic()
    results = [r async for r in fn.map_async(range(count))]
    elapsed = time.monotonic() - began
    assert results == list(range(count))
    return elapsed


async def plain_run(address: str, count: int) -> float:
    client = await Client.connect(address)
    queue = f"plain-{uuid.uuid4().hex[:8]}"
    async with Worker(client, task_queue=queue, workflows=[PlainWorkflow], activities=[plain_activity]):
        began = time.monotonic()
        handles = await asyncio.gather(
            *(
                client.start_workflow(PlainWorkflow.run, i, id=f"plain-{uuid.uuid4()}", task_queue=queue)
                for i in range(count)
            )
        )
        results = await asyncio.gather(*(h.result() for h in handles))
        elapsed = time.monotonic() - began
    assert results == list(range(count))
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    with stack_with_project(TASKS) as (env, _tmp):
        plain = asyncio.run(plain_run(env["TEMPORAL_ADDRESS"], args.count))
        mn = asyncio.run(multinode_run(args.count))
    n = args.count
    print(f"multinode: {n} no-op invocations (max_concurrency=100): {mn:7.2f} s   {n / mn:8.1f} invocations/s")
    print(f"plain Temporal: {n} workflows + 1 activity each:       {plain:7.2f} s   {n / plain:8.1f} workflows/s")
    print(f"ratio (multinode time / plain time): {mn / plain:.1f}x")


if __name__ == "__main__":
    main()
