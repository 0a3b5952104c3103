# ruff: noqa: F811 - the fixtures imported from tests.test_fargate are requested by name
"""Fargate in production: capacity waits, credentials out of overrides, adopting tasks, the reconciler.

Error shapes moto cannot produce (vCPU quota, "Capacity is unavailable", ConflictException) are stubbed
with botocore's Stubber; the rest runs against moto's server and, end to end, through the fake data plane
(tests/fake_fargate.py) with a real Temporal dev server and control-plane worker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.stub import ANY, Stubber

from multinode import InvocationStatus, get_deployed_function
from multinode._credentials import ENV_CONTAINER_SECRETS
from multinode._settings import ENV_TEMPORAL_PROFILE, MultinodeSettings
from multinode.activities import _capacity
from multinode.control_plane.reconciler import reconcile_once
from multinode.errors import ProvisionerError
from multinode.provisioner import CapacityUnavailableError
from multinode.provisioner.fargate import FargateProvisioner, stopped_task_status
from multinode.provisioner.fargate_settings import FargateSettings
from tests.aws import (  # noqa: F401 - fixtures
    AwsTarget,
    fixture_aws_env,
    fixture_aws_network,
    fixture_aws_target,
    fixture_fake_fargate,
    fixture_fargate_settings,
    moto_only,
    running_task_arns,
    stubbed_provisioner,
)
from tests.helpers import assert_eventually
from tests.test_fargate import E2E_TASKS, FULL_ENV, IMAGE, fargate_stack, settings, spec  # noqa: F401 - fixtures

pytestmark = pytest.mark.timeout(120)

CAPACITY_REASON = "Capacity is unavailable at this time. Please try again later or in a different availability zone"
TASK_ARN = "arn:aws:ecs:eu-west-1:123456789012:task/multinode/0123456789abcdef0123456789abcdef"


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FargateProvisioner, Stubber]]:
    settings = FargateSettings.from_env({**FULL_ENV, "MULTINODE_FARGATE_SPOT": "retried"})
    with stubbed_provisioner(monkeypatch, settings) as (provisioner, stubber):
        provisioner._task_definitions[IMAGE] = "arn:aws:ecs:eu-west-1:123456789012:task-definition/multinode-fn-x:1"
        yield provisioner, stubber


# --- capacity and quota errors are waits, not failures ------------------------------------------------


@pytest.mark.parametrize(
    ("code", "message", "limit"),
    [
        (
            "ThrottlingException",
            "You've reached the limit on the number of vCPUs you can run concurrently",
            "L-3032A538",
        ),
        ("ThrottlingException", "Rate exceeded", "ECS API request rate"),
        ("LimitExceededException", "Too many concurrent attempts", "ECS API request rate"),
    ],
)
def test_quota_and_throttling_at_run_task_mean_wait(
    stubbed: tuple[FargateProvisioner, Stubber], code: str, message: str, limit: str
) -> None:
    provisioner, stubber = stubbed
    stubber.add_client_error("run_task", service_error_code=code, service_message=message, http_status_code=400)
    with pytest.raises(CapacityUnavailableError) as info:
        provisioner.start(spec())
    assert limit in info.value.limit and info.value.remedy


def test_capacity_unavailable_failure_means_wait(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, stubber = stubbed
    stubber.add_response("run_task", {"tasks": [], "failures": [{"reason": CAPACITY_REASON}]})
    with pytest.raises(CapacityUnavailableError, match="Capacity is unavailable") as info:
        provisioner.start(spec())
    assert "availability zones" in info.value.remedy


def test_other_run_task_failures_are_still_errors(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, stubber = stubbed
    stubber.add_response("run_task", {"tasks": [], "failures": [{"reason": "MISSING"}]})
    with pytest.raises(ProvisionerError) as info:
        provisioner.start(spec())
    assert not isinstance(info.value, CapacityUnavailableError)


def test_a_retried_run_task_adopts_the_task_it_already_started(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, stubber = stubbed
    stubber.add_client_error(
        "run_task",
        service_error_code="ConflictException",
        service_message="The clientToken is already in use with a different RunTask request.",
        http_status_code=400,
        modeled_fields={"resourceIds": [TASK_ARN]},
    )
    assert provisioner.start(spec()) == TASK_ARN


def test_retried_functions_run_on_spot_when_asked(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, stubber = stubbed
    common = {
        k: ANY
        for k in ("cluster", "taskDefinition", "count", "startedBy", "clientToken", "networkConfiguration", "overrides")
    }
    spot = [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
    stubber.add_response(
        "run_task", {"tasks": [{"taskArn": TASK_ARN}]}, {**common, "tags": ANY, "capacityProviderStrategy": spot}
    )
    stubber.add_response(
        "run_task", {"tasks": [{"taskArn": TASK_ARN + "0"}]}, {**common, "tags": ANY, "launchType": "FARGATE"}
    )
    provisioner.start(spec(interruptible=True))
    provisioner.start(spec(interruptible=False))
    stubber.assert_no_pending_responses()


def test_a_task_still_provisioning_is_starting_and_one_that_found_no_capacity_says_so(
    stubbed: tuple[FargateProvisioner, Stubber],
) -> None:
    provisioner, stubber = stubbed
    task = {"taskArn": TASK_ARN, "lastStatus": "PROVISIONING", "desiredStatus": "RUNNING", "containers": []}
    stubber.add_response("describe_tasks", {"tasks": [task], "failures": []})
    assert provisioner.status(TASK_ARN).state == "starting"
    stopped = {
        **task,
        "lastStatus": "STOPPED",
        "desiredStatus": "STOPPED",
        "stopCode": "TaskFailedToStart",
        "stoppedReason": CAPACITY_REASON,
    }
    status = stopped_task_status(stopped, "multinode")
    assert status.state == "exited" and status.no_capacity and "Capacity is unavailable" in status.reason
    pull = {**stopped, "stoppedReason": "CannotPullContainerError: pull image manifest has been retried 5 time(s)"}
    assert not stopped_task_status(pull, "multinode").no_capacity


# --- credentials reach containers through the task definition's secrets ----------------------------------

SECRET_PROFILE = {"address": "temporal.example:7233", "namespace": "prod", "api_key": "very-secret-api-key"}


def test_secrets_are_refused_as_overrides_without_a_secret_arn(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, _ = stubbed
    environment = {ENV_TEMPORAL_PROFILE: json.dumps(SECRET_PROFILE), "MULTINODE_EXECUTION_ID": "x"}
    with pytest.raises(ProvisionerError, match="MULTINODE_CONTAINER_SECRET_ARN"):
        provisioner.start(spec(environment=environment))


def test_with_a_secret_arn_overrides_hold_no_secret(fargate_settings: FargateSettings, aws_env: AwsTarget) -> None:
    secret_arn = aws_env.client("secretsmanager").create_secret(
        Name=f"multinode-test/{uuid.uuid4().hex[:8]}", SecretString="{}"
    )["ARN"]
    provisioner = FargateProvisioner(fargate_settings.model_copy(update={"container_secret_arn": secret_arn}))
    environment = {
        ENV_TEMPORAL_PROFILE: json.dumps(SECRET_PROFILE),
        "MULTINODE_ENCRYPTION_KEYS": "k1:c2VjcmV0LWtleS1tYXRlcmlhbC1zZWNyZXQta2V5LW1hdGVyaWFs",
        "MULTINODE_EXECUTION_ID": "x",
    }
    arn = provisioner.start(spec(environment=environment))
    try:
        ecs = aws_env.client("ecs")
        (task,) = ecs.describe_tasks(cluster=fargate_settings.cluster, tasks=[arn])["tasks"]
        text = json.dumps(task, default=str)
        assert "very-secret-api-key" not in text and "c2VjcmV0" not in text
        (override,) = task["overrides"]["containerOverrides"]
        env = {e["name"]: e["value"] for e in override["environment"]}
        assert json.loads(env[ENV_TEMPORAL_PROFILE]) == {"address": "temporal.example:7233", "namespace": "prod"}
        definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
        assert definition["family"].startswith("multinode-fn-")
        (container,) = definition["containerDefinitions"]
        assert container["secrets"] == [{"name": ENV_CONTAINER_SECRETS, "valueFrom": secret_arn}]
    finally:
        provisioner.stop(arn)


# --- end to end through the fake data plane ---------------------------------------------------------


@pytest.fixture
def fast_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The worker runs in this process: shorten the waits between starts (5 s, 10 s, ...)."""
    monkeypatch.setattr(_capacity, "CAPACITY_BACKOFF_INITIAL_SECONDS", 0.2)
    monkeypatch.setattr(_capacity, "HEARTBEAT_SECONDS", 0.5)
    # The worker's provisioner looks at a starting task every second instead of every 5 s.
    monkeypatch.setattr(FargateProvisioner, "status_poll_interval", 1.0)


@moto_only
def test_tasks_that_find_no_capacity_are_started_again_without_using_retries(
    fargate_stack: Any, project_name: str, fast_backoff: None
) -> None:
    fargate_stack({"main.py": E2E_TASKS})
    fargate_stack.fake.fail_next_starts(2, reason=CAPACITY_REASON)
    fn = get_deployed_function(project_name, "add")
    invocation_id = fn.start(2, 3)
    assert fn.await_result(invocation_id, timeout=90) == 5
    invocation = fn.get(invocation_id)
    assert invocation.num_failed_attempts == 0 and len(invocation.executions) == 1
    assert invocation.executions[0].waiting_for_capacity is None


@moto_only
def test_an_invocation_waiting_for_capacity_is_pending_and_can_be_cancelled(
    fargate_stack: Any, project_name: str, fast_backoff: None, fargate_settings: FargateSettings, aws_env: AwsTarget
) -> None:
    fargate_stack({"main.py": E2E_TASKS})
    fargate_stack.fake.fail_next_starts(10_000, reason=CAPACITY_REASON)
    fn = get_deployed_function(project_name, "add")
    invocation_id = fn.start(2, 3)

    def waiting() -> Any:
        invocation = fn.get(invocation_id)
        execution = invocation.executions[-1] if invocation.executions else None
        return invocation if execution and execution.waiting_for_capacity else None

    invocation = assert_eventually(waiting, timeout=60, interval=0.5)
    assert invocation.status == InvocationStatus.PENDING
    assert "Capacity is unavailable" in (invocation.executions[-1].waiting_for_capacity or "")
    fn.cancel(invocation_id)
    # The cancel reaches the waiting provision activity with a heartbeat's answer (within ~12 s).
    cancelled = assert_eventually(
        lambda: (i := fn.get(invocation_id)).status == InvocationStatus.CANCELLED and i.terminated and i,
        timeout=60,
        interval=0.5,
    )
    assert cancelled.num_failed_attempts == 0
    assert_eventually(lambda: running_task_arns(aws_env.client("ecs"), fargate_settings.cluster) == [], timeout=30)


@pytest.fixture(autouse=True)
def capacity_wait(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """``@pytest.mark.capacity_wait(SECONDS)``: the worker's MULTINODE_CAPACITY_WAIT_SECONDS (autouse, so
    it is set before the settings fixture reads the environment)."""
    marker = request.node.get_closest_marker("capacity_wait")
    if marker is not None:
        monkeypatch.setenv("MULTINODE_CAPACITY_WAIT_SECONDS", str(marker.args[0]))


SECRET_TASKS = """
import os

from multinode import Multinode

mn = Multinode()

@mn.function()
def add(a, b):
    return a + b

@mn.function()
def environment_names():
    return sorted(os.environ)

@mn.function()
def nested():
    return add.call_remote(20, 22)
"""
KEYS = "k1:" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWY="


@pytest.fixture(autouse=True)
def container_secret(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str | None:
    """``@pytest.mark.container_secret``: payloads encrypted with KEYS, which the containers get only from a
    Secrets Manager secret (MULTINODE_CONTAINER_SECRET_ARN), set up before the settings fixture reads the
    environment. Returns the secret's ARN."""
    if request.node.get_closest_marker("container_secret") is None:
        return None
    aws_env: AwsTarget = request.getfixturevalue("aws_env")
    fargate_settings: FargateSettings = request.getfixturevalue("fargate_settings")
    address = request.getfixturevalue("dev_server").address
    value = json.dumps(
        {
            ENV_TEMPORAL_PROFILE: json.dumps({"address": address, "namespace": "default"}),
            "MULTINODE_ENCRYPTION_KEYS": KEYS,
        }
    )
    arn = fargate_settings.container_secret_arn  # the fixture's own secret (tests/aws.py), empty until now
    assert arn is not None
    aws_env.client("secretsmanager").put_secret_value(SecretId=arn, SecretString=value)
    monkeypatch.setenv("MULTINODE_ENCRYPTION_KEYS", KEYS)
    return str(arn)


@moto_only
@pytest.mark.container_secret
def test_containers_get_keys_from_the_secret_and_user_code_never_sees_them(
    fast_backoff: None,
    fargate_stack: Any,
    project_name: str,
    fargate_settings: FargateSettings,
    aws_env: AwsTarget,
    container_secret: str,
) -> None:
    fargate_stack({"main.py": SECRET_TASKS})
    assert get_deployed_function(project_name, "nested").call_remote() == 42  # the agent decrypts and relays
    names = get_deployed_function(project_name, "environment_names").call_remote()
    assert ENV_CONTAINER_SECRETS not in names and "MULTINODE_ENCRYPTION_KEYS" not in names
    ecs = aws_env.client("ecs")
    arns = ecs.list_tasks(cluster=fargate_settings.cluster, desiredStatus="STOPPED")["taskArns"]
    tasks = ecs.describe_tasks(cluster=fargate_settings.cluster, tasks=arns)["tasks"]
    assert len(tasks) == 3
    for task in tasks:
        assert "QUJDREVG" not in json.dumps(task["overrides"])
        definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
        assert definition["containerDefinitions"][0]["secrets"][0]["valueFrom"] == container_secret


@moto_only
@pytest.mark.capacity_wait(2)
def test_a_wait_for_capacity_that_runs_out_fails_naming_the_limit(
    fargate_stack: Any, project_name: str, fast_backoff: None, settings: MultinodeSettings
) -> None:
    assert settings.capacity_wait_seconds == 2
    fargate_stack({"main.py": E2E_TASKS})
    fargate_stack.fake.fail_next_starts(10_000, reason=CAPACITY_REASON)
    fn = get_deployed_function(project_name, "add")
    invocation_id = fn.start(2, 3)
    invocation = assert_eventually(
        lambda: (i := fn.get(invocation_id)).status == InvocationStatus.FAILED and i.terminated and i,
        timeout=90,
        interval=0.5,
    )
    assert invocation.error is not None and invocation.error.type == "CapacityUnavailableError"
    assert "MULTINODE_CAPACITY_WAIT_SECONDS" in invocation.error.message
    assert "availability zones" in invocation.error.message


# --- the reconciler ---------------------------------------------------------------------------------


def test_the_reconciler_stops_tasks_whose_invocation_has_closed(
    fargate_settings: FargateSettings, aws_env: AwsTarget, settings: MultinodeSettings
) -> None:
    """Tasks left behind (as if a worker died before it could stop them): of a closed invocation, of a
    running one, of one Temporal does not know, and of another namespace. Only the first is stopped."""
    from multinode._client import connect

    provisioner = FargateProvisioner(fargate_settings)
    closed, running = f"inv-closed-{uuid.uuid4().hex[:8]}", f"inv-running-{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[list[str], dict[str, str]]:
        client = await connect(settings)
        for workflow_id in (closed, running):  # real workflows; no worker polls their queue
            await client.start_workflow("NoSuchWorkflow", id=workflow_id, task_queue=f"nobody-{uuid.uuid4().hex}")
        await client.get_workflow_handle(closed).terminate("test")
        namespace = client.namespace
        tasks = {
            "closed": provisioner.start(spec(invocation_id=closed, execution_id=f"{closed}-1", namespace=namespace)),
            "running": provisioner.start(spec(invocation_id=running, execution_id=f"{running}-1", namespace=namespace)),
            "unknown": provisioner.start(spec(namespace=namespace)),
            "elsewhere": provisioner.start(spec(invocation_id=closed, execution_id=f"{closed}-2", namespace="other")),
        }
        try:
            return await reconcile_once(client, {"fargate": provisioner}, min_age_seconds=0), tasks
        finally:
            await client.get_workflow_handle(running).terminate("test")

    stopped, tasks = asyncio.run(scenario())
    try:
        assert stopped == [tasks["closed"]]
        left = running_task_arns(aws_env.client("ecs"), fargate_settings.cluster)
        assert sorted(left) == sorted(tasks[k] for k in ("running", "unknown", "elsewhere"))
    finally:
        for arn in tasks.values():
            provisioner.stop(arn)


@moto_only
@pytest.mark.timeout(240)
def test_a_worker_that_dies_while_provisioning_is_replaced_within_a_minute(
    fargate_stack: Any, project_name: str, worker: Any, fargate_settings: FargateSettings, aws_env: AwsTarget
) -> None:
    """The provision activity heartbeats: when its worker dies mid-wait, another worker takes it over
    after the heartbeat timeout (15 s), resumes the wait and starts the container; no attempt is used."""
    fargate_stack({"main.py": E2E_TASKS})
    worker.stop()  # from now on only the worker processes below serve the task queue
    fargate_stack.fake.fail_next_starts(10_000, reason=CAPACITY_REASON)
    first = _worker_process()
    try:
        fn = get_deployed_function(project_name, "add")
        invocation_id = fn.start(4, 5)
        assert_eventually(
            lambda: any(e.waiting_for_capacity for e in fn.get(invocation_id).executions), timeout=90, interval=0.5
        )
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    fargate_stack.fake.clear_failures()
    killed_at = time.monotonic()
    replacement = _worker_process()
    try:
        assert fn.await_result(invocation_id, timeout=150) == 9
        print(f"\nprovisioning taken over and finished {time.monotonic() - killed_at:.1f} s after the worker died")
        invocation = fn.get(invocation_id)
        assert invocation.num_failed_attempts == 0 and len(invocation.executions) == 1
    finally:
        replacement.send_signal(signal.SIGTERM)
        replacement.wait(timeout=60)
    assert_eventually(lambda: running_task_arns(aws_env.client("ecs"), fargate_settings.cluster) == [], timeout=60)


def _worker_process() -> subprocess.Popen[bytes]:
    """``mn worker`` with this test's environment (moto, the fargate settings, the task queue)."""
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "mn"), "worker"],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
