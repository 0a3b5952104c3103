"""Cancellation and timeouts reach user code, with a grace period and a hard kill (grace: 5 s here)."""

from __future__ import annotations

import re
import time

import pytest

from multinode import InvocationStatus, get_deployed_function
from multinode._settings import MultinodeSettings
from multinode.errors import InvocationCancelledError, InvocationTimedOutError
from multinode.provisioner.local import LocalProvisioner
from tests.helpers import ThreadWorker, assert_eventually

GRACEFUL = """
import time
from datetime import timedelta

from multinode import Multinode
from multinode.errors import InvocationCancelledError, InvocationTimedOutError

mn = Multinode()

@mn.function(timeout=timedelta(minutes=30))
def run_function_that_terminates_gracefully(x):
    try:
        print("started", flush=True)
        time.sleep(3600)
    except InvocationCancelledError:
        print("Invocation is cancelled - gracefully terminating")
    except InvocationTimedOutError:
        print("Invocation timed out - gracefully terminating")
    finally:
        print("cleanup done")

@mn.function(timeout=timedelta(seconds=2), max_retries=3)
def sleeps_past_timeout():
    try:
        time.sleep(3600)
    except InvocationTimedOutError:
        print("Invocation timed out - gracefully terminating")
        raise

@mn.function()
def busy_loop():
    print("started", flush=True)
    n = 0
    try:
        while True:
            n += 1
    finally:
        print(f"busy loop interrupted after {n > 0}")

@mn.function()
def ignores_cancellation():
    print("started", flush=True)
    while True:
        try:
            time.sleep(3600)
        except InvocationCancelledError:
            print("ignoring the cancellation", flush=True)

@mn.function()
def slow_cleanup():
    try:
        print("started", flush=True)
        time.sleep(3600)
    finally:
        time.sleep(1.5)
        print("slow cleanup finished", flush=True)

@mn.function()
def dies_during_cleanup(pid_file):
    import os
    from pathlib import Path
    try:
        Path(pid_file).write_text(str(os.getpid()))
        time.sleep(3600)
    finally:
        print("cleaning up forever", flush=True)
        time.sleep(3600)

@mn.function()
def child(i):
    time.sleep(3600)

@mn.function()
def parent():
    ids = [child.start(i) for i in range(3)]
    print("children", ids, flush=True)
    time.sleep(3600)
"""


def _logs_contain(fn, invocation_id: str, settings: MultinodeSettings, text: str) -> bool:
    invocation = fn.get(invocation_id)
    if not invocation.executions:
        return False
    logs, _ = LocalProvisioner(settings.home).logs(invocation.executions[-1].execution_id)
    return text in logs


def test_guide_graceful_termination_example_on_cancel(register, project_name: str, settings) -> None:
    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "run_function_that_terminates_gracefully")
    invocation_id = fn.start(1)
    assert_eventually(lambda: _logs_contain(fn, invocation_id, settings, "started"))
    fn.cancel(invocation_id)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(invocation_id, timeout=30)
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.CANCELLED and invocation.terminated
    assert invocation.executions[0].status == InvocationStatus.CANCELLED
    assert _logs_contain(fn, invocation_id, settings, "Invocation is cancelled - gracefully terminating\ncleanup done")
    fn.cancel(invocation_id)  # a second cancel of a finished invocation is a no-op


def test_timeout_raises_in_user_code_and_is_not_retried(register, project_name: str, settings) -> None:
    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "sleeps_past_timeout")
    invocation_id = fn.start()
    with pytest.raises(InvocationTimedOutError):
        fn.await_result(invocation_id, timeout=60)
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.TIMED_OUT and invocation.terminated
    assert len(invocation.executions) == 1 and invocation.num_failed_attempts == 0
    assert _logs_contain(fn, invocation_id, settings, "Invocation timed out - gracefully terminating")
    duration = (invocation.finished_at - invocation.started_at).total_seconds()
    assert 2 <= duration < 10


def test_cancel_reaches_a_busy_pure_python_loop(register, project_name: str, settings) -> None:
    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "busy_loop")
    invocation_id = fn.start()
    assert_eventually(lambda: _logs_contain(fn, invocation_id, settings, "started"))
    fn.cancel(invocation_id)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(invocation_id, timeout=30)
    assert _logs_contain(fn, invocation_id, settings, "busy loop interrupted after True")


def test_code_that_ignores_cancellation_is_killed_after_grace(register, project_name: str, settings) -> None:
    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "ignores_cancellation")
    invocation_id = fn.start()
    assert_eventually(lambda: _logs_contain(fn, invocation_id, settings, "started"))
    cancelled_at = time.monotonic()
    fn.cancel(invocation_id)
    assert_eventually(lambda: fn.get(invocation_id).status == InvocationStatus.CANCELLING, timeout=10)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(invocation_id, timeout=60)
    waited = time.monotonic() - cancelled_at
    assert settings.grace_period_seconds <= waited < settings.grace_period_seconds + 10
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.CANCELLED and invocation.terminated
    assert _logs_contain(fn, invocation_id, settings, "ignoring the cancellation")
    assert LocalProvisioner(settings.home).running_handles() == []


def test_status_is_cancelling_during_cleanup(register, project_name: str, settings) -> None:
    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "slow_cleanup")
    invocation_id = fn.start()
    assert_eventually(lambda: _logs_contain(fn, invocation_id, settings, "started"))
    fn.cancel(invocation_id)
    fn.cancel(invocation_id)  # twice: no-op
    assert_eventually(lambda: fn.get(invocation_id).status == InvocationStatus.CANCELLING, timeout=10)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(invocation_id, timeout=30)
    assert _logs_contain(fn, invocation_id, settings, "slow cleanup finished")


def test_pending_invocation_is_cancelled_without_a_container(settings, project_name: str, register) -> None:
    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "run_function_that_terminates_gracefully")
    # With no worker on its task queue, the invocation is recorded and stays PENDING.
    offline = settings.model_copy(update={"task_queue": settings.task_queue + "-offline"})
    pending = get_deployed_function(project_name, "run_function_that_terminates_gracefully", settings=offline)
    invocation_id = pending.start(1)
    assert pending.get(invocation_id).status == InvocationStatus.PENDING
    pending.cancel(invocation_id)
    late_worker = ThreadWorker(offline)
    try:
        with pytest.raises(InvocationCancelledError):
            pending.await_result(invocation_id, timeout=30)
        invocation = pending.get(invocation_id)
        assert invocation.status == InvocationStatus.CANCELLED
        assert invocation.executions == [] and invocation.terminated
    finally:
        late_worker.stop()
    del fn


def test_cancelling_a_parent_cancels_its_children(register, project_name: str, settings) -> None:
    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "parent")
    children_fn = get_deployed_function(project_name, "child")
    parent_id = fn.start()
    assert_eventually(lambda: _logs_contain(fn, parent_id, settings, "children"), timeout=60)
    logs, _ = LocalProvisioner(settings.home).logs(fn.get(parent_id).executions[0].execution_id)
    children = re.findall(r"inv-[0-9a-f]{32}", logs)
    assert_eventually(lambda: all(children_fn.get(i).status == InvocationStatus.RUNNING for i in children), timeout=60)
    assert len(children) == 3
    fn.cancel(parent_id)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(parent_id, timeout=30)
    for child_id in children:
        with pytest.raises(InvocationCancelledError):
            children_fn.await_result(child_id, timeout=30)
        child = children_fn.get(child_id)
        assert child.parent_invocation_id == parent_id and child.terminated
    assert LocalProvisioner(settings.home).running_handles() == []


def test_container_crash_during_cleanup_does_not_leave_it_cancelling(
    register, project_name: str, settings, tmp_path
) -> None:
    import os
    import signal

    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "dies_during_cleanup")
    pid_file = tmp_path / "pid"
    invocation_id = fn.start(str(pid_file))
    pid = int(assert_eventually(lambda: pid_file.exists() and pid_file.read_text(), timeout=30))
    fn.cancel(invocation_id)
    assert_eventually(lambda: _logs_contain(fn, invocation_id, settings, "cleaning up forever"), timeout=10)
    crashed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(invocation_id, timeout=30)
    assert time.monotonic() - crashed_at < settings.grace_period_seconds  # not left waiting for the grace period
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.CANCELLED and invocation.terminated
