"""Failures, retries, memory limits and concurrency quotas that hold across worker processes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import Client

from multinode import InvocationStatus, get_deployed_function
from multinode._handle import DeployedFunction
from multinode._settings import MultinodeSettings
from multinode.errors import InvocationFailedError
from multinode.provisioner.local import LocalProvisioner
from multinode.workflows import invocation as invocation_workflow
from multinode.workflows.invocation import SLOT_REQUEST_FALLBACK
from tests.helpers import ThreadWorker, assert_eventually

TASKS = """
import os
import time
from pathlib import Path

from multinode import Multinode

mn = Multinode()

def _attempt(counter):
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    return n

@mn.function(max_retries=2)
def fails_twice(counter):
    n = _attempt(counter)
    if n <= 2:
        raise RuntimeError(f"attempt {n} fails")
    return f"succeeded on attempt {n}"

@mn.function(max_retries=1)
def fails_twice_one_retry(counter):
    n = _attempt(counter)
    if n <= 2:
        raise RuntimeError(f"attempt {n} fails")
    return n

@mn.function(max_retries=1)
def killed_once(counter, pid_file):
    n = _attempt(counter)
    if n == 1:
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(3600)
    return f"attempt {n}"

@mn.function(memory="256 MiB")
def eats_memory(megabytes):
    hoard = b"x" * (megabytes * 1024 * 1024)
    time.sleep(5)
    return len(hoard)

@mn.function(max_concurrency=2)
def limited(seconds):
    time.sleep(seconds)
    return "done"

@mn.function(max_concurrency=1)
def one_at_a_time(path, item):
    with open(path, "a") as f:
        f.write(f"{item}\\n")
    return item
"""


def test_fails_twice_then_succeeds_with_two_retries(register, project_name: str, tmp_path: Path) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "fails_twice")
    invocation_id = fn.start(str(tmp_path / "counter"))
    assert fn.await_result(invocation_id, timeout=90) == "succeeded on attempt 3"
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.SUCCEEDED
    assert invocation.num_failed_attempts == 2
    assert [e.status for e in invocation.executions] == [
        InvocationStatus.FAILED,
        InvocationStatus.FAILED,
        InvocationStatus.SUCCEEDED,
    ]
    assert [e.error.message for e in invocation.executions[:2] if e.error] == ["attempt 1 fails", "attempt 2 fails"]
    assert len({e.execution_id for e in invocation.executions}) == 3  # a fresh container each time
    assert all(e.terminated for e in invocation.executions)
    first, second = invocation.executions[0], invocation.executions[1]
    assert first.finished_at and second.started_at and second.started_at > first.finished_at


def test_fails_twice_with_one_retry_fails(register, project_name: str, tmp_path: Path) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "fails_twice_one_retry")
    invocation_id = fn.start(str(tmp_path / "counter"))
    with pytest.raises(InvocationFailedError, match="attempt 2 fails"):
        fn.await_result(invocation_id, timeout=90)
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.FAILED and invocation.num_failed_attempts == 2
    assert len(invocation.executions) == 2


def test_container_killed_with_sigkill_is_retried(register, project_name: str, tmp_path: Path) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "killed_once")
    pid_file = tmp_path / "pid"
    invocation_id = fn.start(str(tmp_path / "counter"), str(pid_file))
    pid = int(assert_eventually(lambda: pid_file.exists() and pid_file.read_text(), timeout=60))
    os.kill(pid, signal.SIGKILL)
    assert fn.await_result(invocation_id, timeout=90) == "attempt 2"
    invocation = fn.get(invocation_id)
    assert invocation.num_failed_attempts == 1
    first = invocation.executions[0]
    assert first.status == InvocationStatus.FAILED and first.error is not None
    assert "SIGKILL" in first.error.message


def test_memory_limit_stops_the_process(register, project_name: str) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "eats_memory")
    invocation_id = fn.start(600)
    with pytest.raises(InvocationFailedError, match="out of memory") as info:
        fn.await_result(invocation_id, timeout=60)
    assert "256 MiB" in str(info.value)
    assert fn.get(invocation_id).terminated


def test_quota_holds_across_two_worker_processes(
    register, project_name: str, settings: MultinodeSettings, worker: ThreadWorker
) -> None:
    register({"main.py": TASKS})
    second = subprocess.Popen(
        [str(Path(sys.executable).parent / "mn"), "worker"],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        fn = get_deployed_function(project_name, "limited")
        provisioner = LocalProvisioner(settings.home)
        peak = {"containers": 0, "running": 0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                peak["containers"] = max(peak["containers"], len(provisioner.running_handles()))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample)
        sampler.start()
        ids = []
        for _ in range(8):
            ids.append(fn.start(1.5))
            time.sleep(0.05)
        # One count query is a snapshot; reading the invocations one by one would not be.
        query = f"MultinodeProject = '{project_name}' AND MultinodeStatus = 'RUNNING'"
        client = asyncio.run(Client.connect(settings.temporal_address))
        while not all(fn.get(i).status.is_final for i in ids):
            running = asyncio.run(client.count_workflows(query)).count
            peak["running"] = max(peak["running"], running)
            time.sleep(0.02)
        stop.set()
        sampler.join()
        invocations = [fn.get(i) for i in ids]
        assert all(inv.status == InvocationStatus.SUCCEEDED for inv in invocations)
        assert peak["containers"] == 2 and peak["running"] == 2, peak
        # started_at is the quota's grant time: exactly the order in which slots were granted.
        started = [inv.started_at for inv in invocations]
        assert started == sorted(started)  # first come, first served
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=30)


def test_map_items_are_served_in_input_order(register, project_name: str, tmp_path: Path) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "one_at_a_time")
    path = tmp_path / "order"
    assert list(fn.starmap([(str(path), i) for i in range(6)])) == list(range(6))
    assert path.read_text().split() == [str(i) for i in range(6)]


def test_invocation_asks_for_its_slot_itself_when_the_starter_did_not(
    register, project_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A starter that dies between starting the workflow and queueing it at the quota loses nothing."""
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "limited")

    async def starter_died(*args: object) -> None:
        return None

    monkeypatch.setattr(DeployedFunction, "_request_slots", starter_died)
    # The worker runs in this process: its workflows wait 3 s for a grant instead of 30 s before asking.
    fallback = timedelta(seconds=3)
    assert fallback < SLOT_REQUEST_FALLBACK
    monkeypatch.setattr(invocation_workflow, "SLOT_REQUEST_FALLBACK", fallback)
    invocation_id = fn.start(0)
    assert fn.await_result(invocation_id, timeout=90) == "done"
    invocation = fn.get(invocation_id)
    assert invocation.started_at and invocation.created_at
    assert (invocation.started_at - invocation.created_at).total_seconds() >= fallback.total_seconds()
