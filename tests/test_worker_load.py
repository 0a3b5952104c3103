"""A control-plane worker under load: its executor of blocking calls, DescribeTasks shared without a
lock held across the call, and stopping containers without sleeping in a thread.

The figures (how many concurrent provisions and deprovisions one worker sustains) come from
benchmarks/bench_fargate_worker.py; these tests pin the mechanisms.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.stub import Stubber
from temporalio.testing import ActivityEnvironment

from multinode._protocol import ContainerHandle
from multinode._settings import MultinodeSettings
from multinode._vocabulary import ContainerState
from multinode.activities import _blocking
from multinode.activities._blocking import (
    DEFAULT_PROVISIONER_THREADS,
    MAX_PROVISIONER_THREADS,
    BlockingExecutor,
    configure_blocking,
    provisioner_threads,
)
from multinode.activities.log_reads import READ_THREADS
from multinode.activities.provisioning import ProvisioningActivities
from multinode.errors import ConfigurationError
from multinode.provisioner import _fargate_describe, fargate
from multinode.provisioner._fargate_aws import MAX_POOL_CONNECTIONS, RETRY_CONFIG
from multinode.provisioner._fargate_describe import TaskDescriptions
from multinode.provisioner.base import ContainerSpec, ContainerStatus, Provisioner
from multinode.provisioner.fargate import STOP_REASON, FargateProvisioner
from multinode.provisioner.fargate_settings import FargateSettings
from tests.aws import (  # noqa: F401 - fixtures
    fixture_aws_env,
    fixture_aws_network,
    fixture_aws_target,
    fixture_fargate_settings,
    stubbed_provisioner,
)
from tests.helpers import assert_eventually

pytestmark = pytest.mark.timeout(60)


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Wait on the loop until ``check()`` is true (the async form of ``assert_eventually``)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true within {timeout} s"
        await asyncio.sleep(0.005)


@pytest.fixture
def blocked() -> Iterator[tuple[BlockingExecutor, threading.Event]]:
    """An executor of one thread, held by a call that waits for the event."""
    executor = BlockingExecutor(1)
    gate = threading.Event()
    executor.submit(gate.wait)
    yield executor, gate
    gate.set()
    executor.shutdown()


# --- the executor -----------------------------------------------------------------------------------


async def test_a_call_waiting_for_a_thread_keeps_its_activity_heartbeating(
    blocked: tuple[BlockingExecutor, threading.Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    executor, gate = blocked
    monkeypatch.setattr(_blocking, "HEARTBEAT_SECONDS", 0.01)
    beats: list[tuple[Any, ...]] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details)
    call = asyncio.ensure_future(env.run(executor.run, str.upper, "done", heartbeat_details=("provisioning",)))
    await until(lambda: len(beats) >= 3)  # queued behind the held thread, and still heartbeating
    load = executor.load()
    assert (load.running, load.queued, load.peak_queued) == (1, 1, 1) and load.oldest_queued_seconds > 0
    assert beats[0] == ("provisioning",) and not call.done()
    gate.set()
    assert await call == "DONE"
    assert executor.load().queued == 0 and executor.load().running == 0


async def test_a_call_cancelled_while_queued_never_runs(blocked: tuple[BlockingExecutor, threading.Event]) -> None:
    executor, gate = blocked
    ran: list[str] = []
    call = asyncio.ensure_future(executor.run(ran.append, "cancelled"))
    await until(lambda: executor.load().queued == 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert executor.load().queued == 0
    gate.set()
    executor.submit(ran.append, "after").result(timeout=10)  # one thread, in order: the cancelled one went first
    assert ran == ["after"]


def test_outside_an_activity_nothing_heartbeats(blocked: tuple[BlockingExecutor, threading.Event]) -> None:
    executor, gate = blocked
    gate.set()
    assert asyncio.run(executor.run(sum, [1, 2])) == 3


def test_provisioner_threads_setting() -> None:
    assert provisioner_threads({}) == DEFAULT_PROVISIONER_THREADS
    assert provisioner_threads({"MULTINODE_PROVISIONER_THREADS": " 8 "}) == 8
    for wrong in ("0", str(MAX_PROVISIONER_THREADS + 1), "many", "-3"):
        with pytest.raises(ConfigurationError, match="MULTINODE_PROVISIONER_THREADS=.*unset it for the default"):
            provisioner_threads({"MULTINODE_PROVISIONER_THREADS": wrong})
    assert configure_blocking(3).threads == 3 and _blocking.blocking_executor().threads == 3
    assert configure_blocking(3) is _blocking.blocking_executor()  # same size: kept
    configure_blocking(DEFAULT_PROVISIONER_THREADS)


def test_boto_clients_keep_a_connection_per_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore's default pool of 10 connections would open and discard one per call beyond ten."""
    assert MAX_POOL_CONNECTIONS >= MAX_PROVISIONER_THREADS + READ_THREADS
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    provisioner = FargateProvisioner(_settings())
    assert provisioner._ecs.meta.config.max_pool_connections == RETRY_CONFIG.max_pool_connections
    assert provisioner._logs.meta.config.max_pool_connections == MAX_POOL_CONNECTIONS


# --- DescribeTasks shared between threads -----------------------------------------------------------


class SlowDescribe:
    """A DescribeTasks stand-in that holds each call until released (or fails it)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.release = threading.Event()
        self.release.set()
        self.entered = threading.Semaphore(0)
        self.error: Exception | None = None

    def __call__(self, arns: list[str]) -> list[dict[str, Any]]:
        self.calls.append(list(arns))
        self.entered.release()
        assert self.release.wait(30)
        if self.error is not None:
            raise self.error
        return [{"taskArn": arn, "lastStatus": "RUNNING", "desiredStatus": "RUNNING"} for arn in arns]


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` in a thread; the list gets its result or its exception."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except Exception as exc:  # noqa: BLE001 - handed to the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_recent_holds_no_lock_while_describing_and_one_refresh_serves_its_waiters() -> None:
    describe = SlowDescribe()
    descriptions = TaskDescriptions(describe)
    descriptions.recent("task/b", 60.0)  # known and fresh
    describe.release.clear()
    first, first_out = in_thread(lambda: descriptions.recent("task/a", 60.0))
    assert describe.entered.acquire(timeout=10) and describe.entered.acquire(timeout=10)
    # While that call hangs: a fresh answer comes at once, another task gets a call of its own, and a
    # second caller for the same task waits for the call in flight instead of making another.
    fresh, fresh_out = in_thread(lambda: descriptions.recent("task/b", 60.0))
    fresh.join(10)
    assert fresh_out and fresh_out[0].task["lastStatus"] == "RUNNING"
    other, other_out = in_thread(lambda: descriptions.recent("task/c", 60.0))
    assert describe.entered.acquire(timeout=10)  # two calls in flight at once
    second, second_out = in_thread(lambda: descriptions.recent("task/a", 60.0))
    assert_eventually(lambda: descriptions.waiting == 1)
    describe.release.set()
    for thread in (first, second, other):
        thread.join(10)
    assert first_out[0] is second_out[0] and first_out[0].task["taskArn"] == "task/a"
    assert other_out[0].task["taskArn"] == "task/c"
    assert sorted(map(tuple, describe.calls)) == [("task/a",), ("task/b",), ("task/c",)]
    assert descriptions.waiting == 0


def test_a_failed_refresh_fails_its_waiters_and_wedges_nothing() -> None:
    describe = SlowDescribe()
    descriptions = TaskDescriptions(describe)
    describe.release.clear()
    describe.error = RuntimeError("throttled")
    first, first_out = in_thread(lambda: descriptions.recent("task/a", 60.0))
    assert describe.entered.acquire(timeout=10)
    second, second_out = in_thread(lambda: descriptions.recent("task/a", 60.0))
    assert_eventually(lambda: descriptions.waiting == 1)
    describe.release.set()
    first.join(10)
    second.join(10)
    assert isinstance(first_out[0], RuntimeError) and second_out[0] is first_out[0]
    describe.error = None
    assert descriptions.recent("task/a", 60.0).task is not None  # the next caller describes it again
    assert len(describe.calls) == 2 and descriptions.waiting == 0


def test_callers_waiting_for_a_free_call_are_described_together(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fargate_describe, "DESCRIBE_CALLS", 1)
    describe = SlowDescribe()
    descriptions = TaskDescriptions(describe)
    describe.release.clear()
    first, first_out = in_thread(lambda: descriptions.recent("task/a", 60.0))
    assert describe.entered.acquire(timeout=10)
    others = [in_thread(lambda name=name: descriptions.recent(f"task/{name}", 60.0)) for name in "bcd"]  # type: ignore[misc]
    assert_eventually(lambda: descriptions.waiting == 3)
    describe.release.set()
    for thread, _ in [(first, first_out), *others]:
        thread.join(10)
    assert [out[0].task["taskArn"] for _, out in others] == ["task/b", "task/c", "task/d"]
    assert describe.calls[0] == ["task/a"] and sorted(describe.calls[1]) == ["task/b", "task/c", "task/d"]
    assert len(describe.calls) == 2  # a burst of new tasks: one call for all that waited


def test_a_stale_refresh_carries_the_other_watched_tasks() -> None:
    describe = SlowDescribe()
    descriptions = TaskDescriptions(describe)
    for name in ("a", "b", "c"):
        descriptions.recent(f"task/{name}", 60.0)
    for described in descriptions.answers.values():
        described.at -= 120
    descriptions.recent("task/a", 60.0)
    assert sorted(describe.calls[-1]) == ["task/a", "task/b", "task/c"] and len(describe.calls) == 4
    descriptions.expire("task/b")  # e.g. after StopTask
    descriptions.recent("task/b", 60.0)
    assert describe.calls[-1] == ["task/b"]


# --- stopping without sleeping in a thread ----------------------------------------------------------


def _settings(**changes: Any) -> FargateSettings:
    fields: dict[str, Any] = {
        "region": "eu-west-1",
        "cluster": "multinode",
        "subnets": ["subnet-aaa"],
        "execution_role_arn": "arn:aws:iam::123456789012:role/exec",
    }
    return FargateSettings(**{**fields, **changes})


TASK = "arn:aws:ecs:eu-west-1:123456789012:task/multinode/0123456789abcdef0123456789abcdef"


def _task(last: str, desired: str) -> dict[str, Any]:
    return {"taskArn": TASK, "lastStatus": last, "desiredStatus": desired}


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FargateProvisioner, Stubber]]:
    with stubbed_provisioner(monkeypatch, _settings()) as (provisioner, stubber):
        yield provisioner, stubber
        stubber.assert_no_pending_responses()


def test_request_stop_asks_once_then_only_looks(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, stubber = stubbed
    describe = {"cluster": "multinode", "tasks": [TASK]}
    stubber.add_response("describe_tasks", {"tasks": [_task("RUNNING", "RUNNING")]}, describe)
    stubber.add_response(
        "stop_task",
        {"task": _task("RUNNING", "STOPPED")},
        {"cluster": "multinode", "task": TASK, "reason": STOP_REASON},
    )
    assert provisioner.request_stop(TASK) is False  # ECS stops it in its own time (SIGTERM, stopTimeout)
    stubber.add_response("describe_tasks", {"tasks": [_task("DEACTIVATING", "STOPPED")]}, describe)
    assert provisioner.request_stop(TASK) is False  # stopping: no second StopTask
    assert provisioner.request_stop(TASK) is False  # within STOP_POLL_SECONDS / 2: the same answer
    provisioner._descriptions.expire(TASK)
    stubber.add_response("describe_tasks", {"tasks": [_task("DEPROVISIONING", "STOPPED")]}, describe)
    assert provisioner.request_stop(TASK) is True


def test_stop_still_returns_once_the_task_is_gone(
    stubbed: tuple[FargateProvisioner, Stubber], monkeypatch: pytest.MonkeyPatch
) -> None:
    provisioner, stubber = stubbed
    monkeypatch.setattr(fargate, "STOP_POLL_SECONDS", 0.01)
    stubber.add_response("describe_tasks", {"tasks": [_task("RUNNING", "RUNNING")]})
    stubber.add_response("stop_task", {"task": _task("RUNNING", "STOPPED")})
    stubber.add_response("describe_tasks", {"tasks": [_task("DEACTIVATING", "STOPPED")]})
    stubber.add_response("describe_tasks", {"tasks": [_task("STOPPED", "STOPPED")]})
    provisioner.stop(TASK)


def test_request_stop_against_ecs(fargate_settings: FargateSettings) -> None:
    provisioner = FargateProvisioner(fargate_settings)
    spec = ContainerSpec(
        execution_id=f"inv-{uuid.uuid4().hex}-1",
        invocation_id=f"inv-{uuid.uuid4().hex}",
        project_name="demo",
        version_id="v1",
        function_name="f",
        cpu=0.25,
        memory_mib=512,
        artifact={"image": "public.ecr.aws/docker/library/python:3.12-slim"},
    )
    arn = provisioner.start(spec)
    try:
        assert provisioner.status(arn).state != ContainerState.EXITED
        assert_eventually(lambda: provisioner.request_stop(arn), timeout=120, interval=fargate.STOP_POLL_SECONDS)
        status = provisioner.status(arn)  # StopTask's change is seen at once, not at the next poll
        assert status.state == ContainerState.EXITED and STOP_REASON in status.reason
        assert provisioner.request_stop(arn) is True
    finally:
        provisioner.stop(arn)


class SlowStopper(Provisioner):
    """A backend whose containers take a while to go: ``request_stop`` is False until ``gone`` is set."""

    name = "slow"
    stop_poll_interval = 0.01

    def __init__(self) -> None:
        self.gone = threading.Event()
        self.asked: list[str] = []

    def start(self, spec: ContainerSpec) -> str:
        return spec.execution_id

    def status(self, handle_id: str) -> ContainerStatus:
        return ContainerStatus(ContainerState.RUNNING)

    def stop(self, handle_id: str) -> None:
        raise AssertionError("the deprovision activity must not call the blocking stop")

    def request_stop(self, handle_id: str) -> bool:
        self.asked.append(handle_id)
        return self.gone.is_set()

    def logs(self, handle_id: str, offset: str | None = None) -> tuple[str, str]:
        return "", ""


async def test_deprovision_waits_on_the_loop_and_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_blocking(1)  # one thread: a deprovision holding it would starve every other call
    try:
        provisioner = SlowStopper()
        activities = ProvisioningActivities(None, MultinodeSettings(), {"slow": provisioner})  # type: ignore[arg-type]
        handle = ContainerHandle(provisioner="slow", execution_id="e1", handle_id="c1", grace_period_seconds=1.0)
        waker = activities._watch_wakers.setdefault("c1", asyncio.Event())
        beats: list[float] = []
        env = ActivityEnvironment()
        env.on_heartbeat = lambda *_: beats.append(time.monotonic())
        deprovisions = [asyncio.ensure_future(env.run(activities.deprovision, handle)) for _ in range(3)]
        await until(lambda: len(provisioner.asked) >= 9 and len(beats) >= 6)
        # Meanwhile the single thread is free for other calls.
        assert await asyncio.wait_for(_blocking.run_blocking(str.upper, "free"), 5) == "FREE"
        assert not any(d.done() for d in deprovisions) and not waker.is_set()
        provisioner.gone.set()
        await asyncio.wait_for(asyncio.gather(*deprovisions), 10)
        assert waker.is_set()  # the container's watch looks again at once
    finally:
        configure_blocking(DEFAULT_PROVISIONER_THREADS)


def test_a_backend_without_request_stop_is_stopped_with_stop() -> None:
    stopped: list[str] = []

    class Quick(SlowStopper):
        def stop(self, handle_id: str) -> None:
            stopped.append(handle_id)

    quick = Quick()
    assert Provisioner.request_stop(quick, "c1") is True and stopped == ["c1"]
