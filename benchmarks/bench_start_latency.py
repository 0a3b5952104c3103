"""Time from `.start` to the first line of user code and to the result, for a no-op function, with
`mn dev` running; next to a plain Temporal workflow running one activity in a warm worker on the same
server in the same run.

    .venv/bin/python benchmarks/bench_start_latency.py [--runs 20]
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
from _stack import stack_with_project, summary  # noqa: E402

TASKS = """
import time
from multinode import Multinode

mn = Multinode()

@mn.function()
def noop():
    return time.time()
"""


@activity.defn
async def plain_activity() -> float:
    return time.time()


@workflow.defn
class PlainWorkflow:
    @workflow.run
    async def run(self) -> float:
        return await workflow.execute_activity(plain_activity, start_to_close_timeout=timedelta(seconds=30))


async def plain_temporal(address: str, runs: int) -> tuple[list[float], list[float]]:
    client = await Client.connect(address)
    queue = f"plain-{uuid.uuid4().hex[:8]}"
    first_line, result = [], []
    async with Worker(client, task_queue=queue, workflows=[PlainWorkflow], activities=[plain_activity]):
        for i in range(runs + 2):
            began = time.time()
            ran_at = await client.execute_workflow(PlainWorkflow.run, id=f"plain-{uuid.uuid4()}", task_queue=queue)
            done = time.time()
            if i >= 2:  # warm-up
                first_line.append(ran_at - began)
                result.append(done - began)
    return first_line, result


def multinode_runs(runs: int) -> tuple[list[float], list[float]]:
    from multinode import get_deployed_function

    fn = get_deployed_function("bench", "noop")
    first_line, result = [], []
    for i in range(runs + 1):
        began = time.time()
        invocation_id = fn.start()
        ran_at = fn.await_result(invocation_id)
        done = time.time()
        if i >= 1:
            first_line.append(ran_at - began)
            result.append(done - began)
    return first_line, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with stack_with_project(TASKS) as (env, _tmp):
        mn_first, mn_result = multinode_runs(args.runs)
        plain_first, plain_result = asyncio.run(plain_temporal(env["TEMPORAL_ADDRESS"], args.runs))
    print(summary("multinode: .start -> first line of user code", mn_first))
    print(summary("multinode: .start -> result", mn_result))
    print(summary("plain Temporal workflow + 1 activity: start -> activity runs", plain_first))
    print(summary("plain Temporal workflow + 1 activity: start -> result", plain_result))


if __name__ == "__main__":
    main()
