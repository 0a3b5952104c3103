"""Without a control-plane worker: calls work from what Temporal holds, or say what is missing."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from temporalio.client import Client

from multinode import InvocationStatus, get_deployed_function
from multinode._invocations import LOGS_READ_SECONDS
from multinode._settings import MultinodeSettings
from multinode.errors import AwaitTimeoutError, ControlPlaneUnavailableError, ValidationError
from tests.helpers import ThreadWorker, assert_eventually

TASKS = """
from multinode import Multinode

mn = Multinode()

@mn.function()
def echo(value):
    print("echo", value)
    return value
"""


def _running_logs_workflows(settings: MultinodeSettings) -> int:
    async def count() -> int:
        client = await Client.connect(settings.temporal_address)
        query = (
            f"WorkflowType = 'MultinodeLogs' AND ExecutionStatus = 'Running' AND TaskQueue = '{settings.task_queue}'"
        )
        return (await client.count_workflows(query)).count

    return asyncio.run(count())


@pytest.mark.timeout(180)
def test_calls_without_a_worker(
    register,
    project_name: str,
    settings: MultinodeSettings,
    worker: ThreadWorker,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("MULTINODE_WORKER_WAIT_SECONDS", "1")
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "echo")
    done = fn.start("before")
    assert fn.await_result(done, timeout=60) == "before"
    assert fn.await_result(done, timeout=0) == "before"  # an ended invocation needs no waiting
    with pytest.raises(ValidationError, match="timeout=-1"):
        fn.await_result(done, timeout=-1)
    worker.stop()

    waiting = fn.start("while down")  # recorded PENDING: it runs once a worker is back
    with caplog.at_level(logging.WARNING, logger="multinode"):
        begun = time.monotonic()
        assert fn.get(waiting).status == InvocationStatus.PENDING
        with pytest.raises(AwaitTimeoutError):
            fn.await_result(waiting, timeout=3)
        assert time.monotonic() - begun < 30
    warnings = [r.getMessage() for r in caplog.records if "control-plane worker" in r.getMessage()]
    assert len(warnings) == 1, warnings  # said once, naming the queue and what to start
    assert settings.task_queue in warnings[0] and "mn dev" in warnings[0] and "mn worker" in warnings[0]

    assert fn.get(done).status == InvocationStatus.SUCCEEDED  # a closed invocation needs no worker
    begun = time.monotonic()
    with pytest.raises(ControlPlaneUnavailableError, match="mn worker"):
        fn.logs(done)
    # Refused once nothing answered the log reader's query: after the 1 s wait, asked again for up to 10 s
    # more while the server still lists the stopped worker as a poller (it may have died holding the reader).
    assert time.monotonic() - begun < LOGS_READ_SECONDS
    assert_eventually(lambda: _running_logs_workflows(settings) == 0)  # the unanswered read left nothing behind

    back = ThreadWorker(settings)
    try:
        assert fn.await_result(waiting, timeout=60) == "while down"
        assert "echo before" in fn.logs(done)
    finally:
        back.stop()
