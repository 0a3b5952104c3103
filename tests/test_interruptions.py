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
    print(f"user code started at {time.time()}", flush=True)
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


CONTAINER_START = 60
"""Seconds to wait for user code to start: a container costs ~1 s of CPU, many times that on a loaded machine."""


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
    assert_eventually(lambda: _logs_contain(fn, invocation_id, settings, "started"), timeout=CONTAINER_START)
    fn.cancel(invocation_id)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(invocation_id, timeout=60)
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
    assert invocation.started_at is not None and invocation.finished_at is not None
    assert (invocation.finished_at - invocation.started_at).total_seconds() >= 2  # not before the timeout
    # Ended by the container's own 2 s timer, promptly, not by Temporal's backstop (timeout + grace + 30 s):
    # measured from when the user code began, as starting a container takes long on a loaded machine.
    logs, _ = LocalProvisioner(settings.home).logs(invocation.executions[0].execution_id)
    began = re.search(r"user code started at ([0-9.]+)", logs)
    assert began is not None, logs
    assert invocation.finished_at.timestamp() - float(began.group(1)) < 20


def test_cancel_reaches_a_busy_pure_python_loop(register, project_name: str, settings) -> None:
    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "busy_loop")
    invocation_id = fn.start()
    assert_eventually(lambda: _logs_contain(fn, invocation_id, settings, "started"), timeout=CONTAINER_START)
    fn.cancel(invocation_id)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(invocation_id, timeout=60)
    assert _logs_contain(fn, invocation_id, settings, "busy loop interrupted after True")


def test_code_that_ignores_cancellation_is_killed_after_grace(register, project_name: str, settings) -> None:
    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "ignores_cancellation")
    invocation_id = fn.start()
    assert_eventually(lambda: _logs_contain(fn, invocation_id, settings, "started"), timeout=CONTAINER_START)
    cancelled_at = time.monotonic()
    fn.cancel(invocation_id)
    # CANCELLING lasts the whole grace period (5 s), so a poll cannot miss it.
    assert_eventually(lambda: fn.get(invocation_id).status == InvocationStatus.CANCELLING, timeout=30)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(invocation_id, timeout=90)
    waited = time.monotonic() - cancelled_at
    # The code gets its grace period, then is killed: well before anything else would end it (its own
    # timeout is 1 h). The margin is for Temporal round trips and the kill on a loaded machine.
    assert settings.grace_period_seconds <= waited < settings.grace_period_seconds + 30
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.CANCELLED and invocation.terminated
    assert _logs_contain(fn, invocation_id, settings, "ignoring the cancellation")
    assert LocalProvisioner(settings.home).running_handles() == []


def test_status_is_cancelling_during_cleanup(register, project_name: str, settings) -> None:
    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "slow_cleanup")
    invocation_id = fn.start()
    assert_eventually(lambda: _logs_contain(fn, invocation_id, settings, "started"), timeout=CONTAINER_START)
    fn.cancel(invocation_id)
    fn.cancel(invocation_id)  # twice: no-op
    assert_eventually(lambda: fn.get(invocation_id).status == InvocationStatus.CANCELLING, timeout=30)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(invocation_id, timeout=60)
    assert _logs_contain(fn, invocation_id, settings, "slow cleanup finished")


def test_pending_invocation_is_cancelled_without_a_container(settings, project_name: str, register) -> None:
    register({"main.py": GRACEFUL})
    fn = get_deployed_function(project_name, "run_function_that_terminates_gracefully")
    # With no worker on its task queue, the invocation is recorded and stays PENDING.
    # (`.get` waits worker_wait_seconds for a worker to answer its query, then reads what Temporal has.)
    offline = settings.model_copy(update={"task_queue": settings.task_queue + "-offline", "worker_wait_seconds": 2.0})
    pending = get_deployed_function(project_name, "run_function_that_terminates_gracefully", settings=offline)
    invocation_id = pending.start(1)
    assert pending.get(invocation_id).status == InvocationStatus.PENDING
    pending.cancel(invocation_id)
    late_worker = ThreadWorker(offline)
    try:
        with pytest.raises(InvocationCancelledError):
            pending.await_result(invocation_id, timeout=60)
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

    def children_printed() -> list[str]:
        # The whole line: print() writes "children" and the ids separately, and the log is read meanwhile.
        invocation = fn.get(parent_id)
        if not invocation.executions:
            return []
        logs, _ = LocalProvisioner(settings.home).logs(invocation.executions[0].execution_id)
        line = re.search(r"children \[(.*)\]\n", logs)
        return re.findall(r"inv-[0-9a-f]{32}", line.group(1)) if line else []

    children = assert_eventually(children_printed, timeout=CONTAINER_START)
    assert len(children) == 3
    assert_eventually(lambda: all(children_fn.get(i).status == InvocationStatus.RUNNING for i in children), timeout=60)
    fn.cancel(parent_id)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(parent_id, timeout=60)
    for child_id in children:
        with pytest.raises(InvocationCancelledError):
            children_fn.await_result(child_id, timeout=60)
        child = children_fn.get(child_id)
        assert child.parent_invocation_id == parent_id and child.terminated
    assert LocalProvisioner(settings.home).running_handles() == []


def test_container_crash_during_cleanup_does_not_leave_it_cancelling(
    register, project_name: str, settings, tmp_path, worker: ThreadWorker
) -> None:
    import os
    import signal

    # A long grace period (a worker of its own gives it to the containers): waiting it out takes far
    # longer than noticing the crash, however slow a loaded machine makes the round trips.
    worker.stop()
    patient = settings.model_copy(update={"grace_period_seconds": 60.0})
    patient_worker = ThreadWorker(patient)
    try:
        register({"main.py": GRACEFUL})
        fn = get_deployed_function(project_name, "dies_during_cleanup")
        pid_file = tmp_path / "pid"
        invocation_id = fn.start(str(pid_file))
        pid = int(assert_eventually(lambda: pid_file.exists() and pid_file.read_text(), timeout=CONTAINER_START))
        fn.cancel(invocation_id)
        assert_eventually(lambda: _logs_contain(fn, invocation_id, settings, "cleaning up forever"), timeout=30)
        crashed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(InvocationCancelledError):
            fn.await_result(invocation_id, timeout=patient.grace_period_seconds)
        # Not left waiting for the grace period.
        assert time.monotonic() - crashed_at < patient.grace_period_seconds
        invocation = fn.get(invocation_id)
        assert invocation.status == InvocationStatus.CANCELLED and invocation.terminated
    finally:
        patient_worker.stop()
