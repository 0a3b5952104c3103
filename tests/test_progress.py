"""Progress from `yield`, listing, search attributes, logs and inspection."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from multinode import InvocationStatus, get_deployed_function
from multinode._protocol import quota_workflow_id
from multinode._settings import MultinodeSettings
from tests.helpers import assert_eventually

GUIDE_PROGRESS = """
from multinode import Multinode
import time

mn = Multinode()

@mn.function()
def slowly_calculate_sum_of_squares(bound):
    progress = {"num_terms_incorporated": 0, "sum_so_far": 0}

    for i in range(bound):
        progress["num_terms_incorporated"] += 1
        progress["sum_so_far"] += i * i

        yield progress

        time.sleep(1)

@mn.function()
def tight_loop(n):
    for i in range(n):
        yield i

@mn.function()
def noisy(lines):
    import sys
    for i in range(lines):
        print(f"out line {i}", flush=True)
    print("to stderr", file=sys.stderr, flush=True)
    return lines

@mn.function()
def quick(x):
    return x
"""


def temporal_cli(settings: MultinodeSettings, *args: str) -> str:
    binary = str(Path(sys.executable).parent / "temporal")
    done = subprocess.run(
        [binary, *args, "--address", settings.temporal_address, "--namespace", "default", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


def test_guide_progress_example(register, project_name: str, settings: MultinodeSettings) -> None:
    register({"main.py": GUIDE_PROGRESS})
    fn = get_deployed_function(project_name, "slowly_calculate_sum_of_squares")
    # 8 terms, one a second: room to see 3 distinct values even when each `.get` takes ~1 s (loaded machine).
    invocation_id = fn.start(8)
    seen: list[int] = []

    def progressed() -> bool:
        invocation = fn.get(invocation_id)
        if invocation.result is not None and invocation.status == InvocationStatus.RUNNING:
            seen.append(invocation.result["num_terms_incorporated"])
        return len(set(seen)) >= 3

    assert_eventually(progressed, timeout=60, interval=0.2)  # a container start included
    assert seen == sorted(seen)
    assert_eventually(
        lambda: (
            json.loads(
                temporal_cli(settings, "workflow", "query", "--workflow-id", invocation_id, "--name", "progress")
            )["queryResult"][0]["num_terms_incorporated"]
            >= 2
        ),
        timeout=30,
    )
    assert fn.await_result(invocation_id, timeout=60) == {"num_terms_incorporated": 8, "sum_so_far": 140}
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.SUCCEEDED and invocation.result["sum_so_far"] == 140


def test_tight_loop_of_yields_keeps_history_small(register, project_name: str, settings: MultinodeSettings) -> None:
    register({"main.py": GUIDE_PROGRESS})
    fn = get_deployed_function(project_name, "tight_loop")
    invocation_id = fn.start(200_000)
    assert fn.await_result(invocation_id, timeout=120) == 199_999

    async def history_length() -> int:
        client = await Client.connect(settings.temporal_address)
        history = await client.get_workflow_handle(invocation_id).fetch_history()
        return len(history.events)

    assert asyncio.run(history_length()) < 2_000


def test_list_pages_through_120_invocations(register, project_name: str, settings: MultinodeSettings) -> None:
    register({"main.py": GUIDE_PROGRESS})
    # Started on a task queue that no worker polls, the invocations stay PENDING: listing them needs no
    # worker and no container. (With a worker, 120 invocations run ten containers at a time, and
    # cancelling them all at once puts 120 workflow tasks on it together; on a loaded 2-core machine
    # those outlast Temporal's 10 s workflow task timeout and are retried over and over.)
    offline = settings.model_copy(update={"task_queue": settings.task_queue + "-offline"})
    fn = get_deployed_function(project_name, "quick", settings=offline)
    started = [fn.start(i) for i in range(120)]
    try:
        _check_pages(fn, started, settings)
    finally:
        # No worker will ever run them: end them, and the function's quota (on the same queue), in Temporal.
        asyncio.run(_terminate([*started, quota_workflow_id(project_name, "quick")], settings))


async def _terminate(workflow_ids: list[str], settings: MultinodeSettings) -> None:
    client = await Client.connect(settings.temporal_address)
    for workflow_id in workflow_ids:
        try:
            await client.get_workflow_handle(workflow_id).terminate("test clean-up")
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                raise


def _check_pages(fn, started: list[str], settings: MultinodeSettings) -> None:  # noqa: ANN001
    async def visible() -> int:
        client = await Client.connect(settings.temporal_address)
        return (
            await client.count_workflows(f"MultinodeFunction = 'quick' AND MultinodeProject = '{fn.project_name}'")
        ).count

    # Visibility is eventually consistent: under load the newest starts can take a moment to be listed.
    assert_eventually(lambda: asyncio.run(visible()) == 120, timeout=30)
    first = fn.list()
    assert len(first.invocation_ids) == 50 and first.offset
    second = fn.list(offset=first.offset)
    third = fn.list(offset=second.offset)
    assert len(second.invocation_ids) == 50 and len(third.invocation_ids) == 20 and third.offset is None
    assert first.invocation_ids + second.invocation_ids + third.invocation_ids == started[::-1]


def test_search_attributes_and_memo_through_temporal_cli(
    register, project_name: str, settings: MultinodeSettings
) -> None:
    register({"main.py": GUIDE_PROGRESS})
    fn = get_deployed_function(project_name, "quick")
    invocation_id = fn.start(1)
    fn.await_result(invocation_id, timeout=60)
    query = f"MultinodeProject = '{project_name}' AND MultinodeFunction = 'quick' AND MultinodeStatus = 'SUCCEEDED'"
    listed = assert_eventually(
        lambda: json.loads(temporal_cli(settings, "workflow", "list", "--query", query)), timeout=30
    )
    assert [w["execution"]["workflowId"] for w in listed] == [invocation_id]
    assert listed[0]["type"]["name"] == "MultinodeInvocation"
    described = json.loads(temporal_cli(settings, "workflow", "describe", "--workflow-id", invocation_id))
    text = json.dumps(described)
    assert "MultinodeVersion" in text and "v1" in text


def test_logs_of_a_function_that_prints(register, project_name: str, settings: MultinodeSettings) -> None:
    register({"main.py": GUIDE_PROGRESS})
    fn = get_deployed_function(project_name, "noisy")
    invocation_id = fn.start(3)
    fn.await_result(invocation_id, timeout=60)
    logs = fn.logs(invocation_id)
    assert "out line 0\nout line 1\nout line 2\n" in logs and "to stderr" in logs
    execution_id = fn.get(invocation_id).executions[0].execution_id
    assert fn.logs(invocation_id, execution_id=execution_id) == logs
    mn = str(Path(sys.executable).parent / "mn")
    done = subprocess.run([mn, "logs", invocation_id], capture_output=True, text=True, env=os.environ.copy())
    assert "out line 2" in done.stdout


def test_follow_logs_until_the_invocation_ends(register, project_name: str) -> None:
    register({"main.py": GUIDE_PROGRESS})
    fn = get_deployed_function(project_name, "slowly_calculate_sum_of_squares")
    invocation_id = fn.start(2)
    mn = str(Path(sys.executable).parent / "mn")
    began = time.monotonic()
    done = subprocess.run(
        [mn, "logs", invocation_id, "--follow"], capture_output=True, text=True, env=os.environ.copy(), timeout=90
    )
    assert done.returncode == 0, done.stderr
    assert time.monotonic() - began >= 1
    assert fn.get(invocation_id).status == InvocationStatus.SUCCEEDED
