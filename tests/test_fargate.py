"""The AWS Fargate backend: task sizes, settings, and the provisioner against moto's server over HTTP.

moto records ECS calls but runs nothing; tests/fake_fargate.py runs the tasks as local processes where
a test needs them to run. With MULTINODE_TEST_REAL_AWS=1 the provisioner tests use the real account of
the environment instead (the fake data plane and the end-to-end tests are then skipped).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from multinode import InvocationStatus, get_deployed_function
from multinode._protocol import LOG_READER_WORKFLOW, VersionRecord
from multinode._settings import MultinodeSettings
from multinode.artifacts.local import LocalVersionStore
from multinode.errors import ConfigurationError, InvocationCancelledError, ProvisionerError
from multinode.provisioner.base import ContainerSpec, ContainerStatus
from multinode.provisioner.fargate import (
    CONTAINER_COMMAND,
    CONTAINER_WORKDIR,
    STOP_REASON,
    FargateProvisioner,
    stopped_task_status,
    task_has_exited,
)
from multinode.provisioner.fargate_settings import DEFAULT_LOG_GROUP, FargateSettings
from multinode.provisioner.sizing import FARGATE_SIZES, fargate_size
from tests.aws import (  # noqa: F401 - fixtures
    REAL_AWS,
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
from tests.fake_fargate import FakeFargate, LocalImage, process_alive, script_image
from tests.helpers import ThreadWorker, assert_eventually, workflow_types, write_tasks

IMAGE = "public.ecr.aws/docker/library/python:3.12-slim"
"""Any image string does for moto; with a real account a task really pulls it (it has no Multinode)."""

pytestmark = pytest.mark.timeout(120)


def spec(execution_id: str | None = None, **changes: Any) -> ContainerSpec:
    invocation_id = f"inv-{uuid.uuid4().hex}"
    fields: dict[str, Any] = {
        "execution_id": execution_id or f"{invocation_id}-1",
        "invocation_id": invocation_id,
        "project_name": "demo",
        "version_id": "v3",
        "function_name": "crunch",
        "cpu": 1.0,
        "memory_mib": 3000,
        "artifact": {"image": IMAGE, "code_digest": "c0de", "env_key": "e0e0"},
        "environment": {"MULTINODE_EXECUTION_ID": "x", "GREETING": "hello from the overrides"},
    }
    fields.update(changes)
    return ContainerSpec(**fields)


def exited(provisioner: FargateProvisioner, arn: str, timeout: float = 30.0) -> ContainerStatus:
    """The task's status once it has exited."""

    def check() -> ContainerStatus | None:
        status = provisioner.status(arn)
        return status if status.state == "exited" else None

    status = assert_eventually(check, timeout=timeout, interval=0.2)
    assert status is not None
    return status


def logs_with(provisioner: FargateProvisioner, handle: str, text: str, offset: str | None = None) -> tuple[str, str]:
    """The task's logs (and next offset) once they contain ``text``."""

    def check() -> tuple[str, str] | None:
        chunk = provisioner.logs(handle, offset)
        return chunk if text in chunk[0] else None

    chunk = assert_eventually(check)
    assert chunk is not None
    return chunk


def captured_calls(provisioner: FargateProvisioner, operation: str) -> list[dict[str, Any]]:
    """Parameters of every ``operation`` call the provisioner sends from now on."""
    calls: list[dict[str, Any]] = []

    def capture(params: dict[str, Any], **_: Any) -> None:
        calls.append(dict(params))

    provisioner._ecs.meta.events.register(f"provide-client-params.ecs.{operation}", capture)
    return calls


# --- sizing -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "memory", "expected"),
    [
        # the examples
        (0.1, 256, (256, 512)),
        (16, 65536, (16384, 65536)),
        (0.25, 3000, (512, 3072)),
        # cpu rounds up to the next size
        (0.25, 512, (256, 512)),
        (0.2500001, 512, (512, 1024)),
        (0.26, 512, (512, 1024)),
        (0.5, 1024, (512, 1024)),
        (0.51, 1024, (1024, 2048)),
        (1, 2048, (1024, 2048)),
        (1.01, 2048, (2048, 4096)),
        (2, 4096, (2048, 4096)),
        (2.5, 4096, (4096, 8192)),
        (4, 8192, (4096, 8192)),
        (4.1, 8192, (8192, 16384)),
        (8, 16384, (8192, 16384)),
        (8.5, 16384, (16384, 32768)),
        (16, 32768, (16384, 32768)),
        # 0.25 vCPU: 512, 1024, 2048
        (0.25, 1, (256, 512)),
        (0.25, 511, (256, 512)),
        (0.25, 513, (256, 1024)),
        (0.25, 1024, (256, 1024)),
        (0.25, 1025, (256, 2048)),
        (0.25, 2048, (256, 2048)),
        (0.25, 2049, (512, 3072)),
        # 0.5 vCPU: 1024..4096 by 1024
        (0.5, 1, (512, 1024)),
        (0.5, 1025, (512, 2048)),
        (0.5, 4096, (512, 4096)),
        (0.5, 4097, (1024, 5120)),
        # 1 vCPU: 2048..8192 by 1024
        (1, 1, (1024, 2048)),
        (1, 2049, (1024, 3072)),
        (1, 8192, (1024, 8192)),
        (1, 8193, (2048, 9216)),
        # 2 vCPU: 4096..16384 by 1024
        (2, 1, (2048, 4096)),
        (2, 4097, (2048, 5120)),
        (2, 16384, (2048, 16384)),
        (2, 16385, (4096, 17408)),
        # 4 vCPU: 8192..30720 by 1024
        (4, 1, (4096, 8192)),
        (4, 8193, (4096, 9216)),
        (4, 30720, (4096, 30720)),
        (4, 30721, (8192, 32768)),
        # 8 vCPU: 16384..61440 by 4096
        (8, 1, (8192, 16384)),
        (8, 16385, (8192, 20480)),
        (8, 57345, (8192, 61440)),
        (8, 61440, (8192, 61440)),
        (8, 61441, (16384, 65536)),
        # 16 vCPU: 32768..122880 by 8192
        (16, 1, (16384, 32768)),
        (16, 32769, (16384, 40960)),
        (16, 122880, (16384, 122880)),
        # memory over a small size's maximum moves up as many sizes as needed
        (0.25, 30000, (4096, 30720)),
        (0.25, 65536, (16384, 65536)),
    ],
)
def test_fargate_size_boundaries(cpu: float, memory: int, expected: tuple[int, int]) -> None:
    assert fargate_size(cpu, memory) == expected


def test_every_valid_combination_maps_to_itself_and_results_are_minimal() -> None:
    valid = {(c, m) for c, memories in FARGATE_SIZES for m in memories}
    for cpu_units, memory in valid:
        assert fargate_size(cpu_units / 1024, memory) == (cpu_units, memory)
    for cpu in (0.1, 0.25, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 4, 6, 8, 12, 16):
        for memory in range(128, 64 * 1024 + 1, 384):
            got = fargate_size(cpu, memory)
            assert got in valid
            assert got[0] >= cpu * 1024 and got[1] >= memory
            fitting = [(c, m) for c, m in valid if c >= cpu * 1024 - 1e-6 and m >= memory]
            assert got == min(fitting)


@pytest.mark.parametrize(("cpu", "memory"), [(16.5, 1024), (32, 1024), (16, 122881), (0, 512), (1, 0), (-1, 512)])
def test_fargate_size_without_a_fit_is_a_configuration_error(cpu: float, memory: int) -> None:
    with pytest.raises(ConfigurationError):
        fargate_size(cpu, memory)


# --- settings ---------------------------------------------------------------------------------------

FULL_ENV = {
    "MULTINODE_AWS_REGION": "eu-west-1",
    "MULTINODE_ECS_CLUSTER": "multinode",
    "MULTINODE_SUBNETS": "subnet-aaa, subnet-bbb",
    "MULTINODE_SECURITY_GROUPS": "sg-111",
    "MULTINODE_ASSIGN_PUBLIC_IP": "true",
    "MULTINODE_TASK_EXECUTION_ROLE_ARN": "arn:aws:iam::123456789012:role/exec",
    "MULTINODE_TASK_ROLE_ARN": "arn:aws:iam::123456789012:role/task",
    "MULTINODE_LOG_GROUP": "/multinode/functions-test",
    "MULTINODE_ECR_REPOSITORY": "123456789012.dkr.ecr.eu-west-1.amazonaws.com/multinode/functions",
}


def test_settings_from_env_and_back() -> None:
    settings = FargateSettings.from_env(FULL_ENV)
    assert settings.region == "eu-west-1" and settings.cluster == "multinode"
    assert settings.subnets == ["subnet-aaa", "subnet-bbb"] and settings.security_groups == ["sg-111"]
    assert settings.assign_public_ip is True
    assert (
        settings.execution_role_arn.endswith("role/exec")
        and settings.task_role_arn == FULL_ENV["MULTINODE_TASK_ROLE_ARN"]
    )
    assert settings.log_group == "/multinode/functions-test" and settings.container_name == "multinode"
    assert settings.ecr_repository == FULL_ENV["MULTINODE_ECR_REPOSITORY"]
    assert FargateSettings.from_env(settings.to_env()) == settings
    with pytest.raises(Exception):  # noqa: B017 - frozen (pydantic's ValidationError)
        settings.cluster = "other"  # type: ignore[misc]


def test_settings_defaults_and_region_fallbacks() -> None:
    minimal = {
        k: FULL_ENV[k] for k in ("MULTINODE_ECS_CLUSTER", "MULTINODE_SUBNETS", "MULTINODE_TASK_EXECUTION_ROLE_ARN")
    }
    settings = FargateSettings.from_env({**minimal, "AWS_DEFAULT_REGION": "us-west-2"})
    assert settings.region == "us-west-2"
    assert settings.security_groups == [] and settings.assign_public_ip is False
    assert settings.task_role_arn is None and settings.ecr_repository is None
    assert settings.log_group == DEFAULT_LOG_GROUP
    assert FargateSettings.from_env(settings.to_env()) == settings
    both = {**minimal, "AWS_REGION": "ap-south-1", "AWS_DEFAULT_REGION": "us-west-2"}
    assert FargateSettings.from_env(both).region == "ap-south-1"
    assert FargateSettings.from_env({**both, "MULTINODE_AWS_REGION": "eu-north-1"}).region == "eu-north-1"


@pytest.mark.parametrize(
    ("variable", "terraform_output"),
    [
        ("MULTINODE_AWS_REGION", "aws_region"),
        ("MULTINODE_ECS_CLUSTER", "ecs_cluster"),
        ("MULTINODE_SUBNETS", "subnets"),
        ("MULTINODE_TASK_EXECUTION_ROLE_ARN", "task_execution_role_arn"),
    ],
)
def test_missing_setting_names_the_variable_and_the_terraform_output(variable: str, terraform_output: str) -> None:
    env = {k: v for k, v in FULL_ENV.items() if k != variable}
    with pytest.raises(ConfigurationError) as info:
        FargateSettings.from_env(env)
    assert info.value.parameter == variable
    message = str(info.value)
    assert f"{variable} is not set" in message
    assert "deploy/terraform" in message and f"terraform output {terraform_output}" in message


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("MULTINODE_ASSIGN_PUBLIC_IP", "maybe", "must be true or false"),
        ("MULTINODE_SUBNETS", "subnet-1,sg-2", "not: sg-2"),
        ("MULTINODE_SECURITY_GROUPS", "subnet-1", "sg-... ids"),
        ("MULTINODE_TASK_EXECUTION_ROLE_ARN", "exec-role", "is not an ARN"),
        ("MULTINODE_TASK_ROLE_ARN", "task-role", "is not an ARN"),
    ],
)
def test_malformed_setting_is_a_clear_error(variable: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigurationError, match=expected) as info:
        FargateSettings.from_env({**FULL_ENV, variable: value})
    assert info.value.parameter == variable


def test_settings_and_sizing_do_not_import_boto3() -> None:
    code = (
        "import sys, multinode, multinode.provisioner, multinode.provisioner.fargate_settings, "
        "multinode.provisioner.sizing; assert 'boto3' not in sys.modules and 'botocore' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- reading DescribeTasks (payloads as ECS returns them) -------------------------------------------


def _task(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "taskArn": "arn:aws:ecs:us-east-1:123456789012:task/multinode/0123456789abcdef0123456789abcdef",
        "lastStatus": "STOPPED",
        "desiredStatus": "STOPPED",
        "memory": "2048",
        "containers": [{"name": "multinode", "lastStatus": "STOPPED"}],
    }
    base.update(fields)
    return base


def test_status_of_a_container_that_ran_out_of_memory() -> None:
    task = _task(
        stopCode="EssentialContainerExited",
        stoppedReason="Essential container in task exited",
        containers=[
            {
                "name": "multinode",
                "lastStatus": "STOPPED",
                "exitCode": 137,
                "reason": "OutOfMemoryError: Container killed due to memory usage",
            }
        ],
    )
    status = stopped_task_status(task, "multinode")
    assert status.state == "exited" and status.exit_code == 137
    assert status.reason.startswith("out of memory")
    assert "2048 MiB" in status.reason and "raise `memory`" in status.reason
    assert "EssentialContainerExited: Essential container in task exited" in status.reason
    assert "OutOfMemoryError: Container killed due to memory usage" in status.reason


def test_status_exit_code_from_the_container_or_from_the_reason() -> None:
    exited = _task(
        stopCode="EssentialContainerExited",
        stoppedReason="Essential container in task exited",
        containers=[
            {"name": "sidecar", "lastStatus": "RUNNING"},
            {"name": "multinode", "lastStatus": "STOPPED", "exitCode": 3},
        ],
    )
    status = stopped_task_status(exited, "multinode")
    assert (status.exit_code, status.reason) == (
        3,
        "exited with code 3 (ECS EssentialContainerExited: Essential container in task exited)",
    )
    # moto (and the fake data plane) leave the container PENDING with exitCode 0: trust the reason.
    moto = _task(
        stoppedReason="Essential container in task exited (exit code 4)",
        containers=[{"name": "multinode", "lastStatus": "PENDING", "exitCode": 0}],
    )
    assert stopped_task_status(moto, "multinode").exit_code == 4
    killed = _task(
        stoppedReason="Essential container in task exited (exit code 137)", containers=[{"name": "multinode"}]
    )
    assert "killed by SIGKILL" in stopped_task_status(killed, "multinode").reason
    ok = _task(containers=[{"name": "multinode", "lastStatus": "STOPPED", "exitCode": 0}])
    assert stopped_task_status(ok, "multinode").reason == "exited normally"


def test_status_of_tasks_stopped_without_an_exit_code() -> None:
    by_us = stopped_task_status(
        _task(stopCode="UserInitiated", stoppedReason=STOP_REASON, containers=[{"name": "multinode"}]), "multinode"
    )
    assert by_us.exit_code is None and by_us.reason == f"the task stopped (ECS UserInitiated: {STOP_REASON})"
    pull = stopped_task_status(
        _task(
            stopCode="TaskFailedToStart",
            stoppedReason="CannotPullContainerError: pull image manifest has been retried 5 time(s): not found",
            containers=[{"name": "multinode", "lastStatus": "STOPPED", "reason": "CannotPullContainerError: ..."}],
        ),
        "multinode",
    )
    assert pull.exit_code is None and pull.reason.startswith("the task failed to start (ECS TaskFailedToStart: ")
    assert "may pull it" in pull.reason
    spot = stopped_task_status(_task(stopCode="SpotInterruption", stoppedReason="Your Spot Task was interrupted."), "x")
    assert spot.reason.startswith("AWS stopped the task")


def test_a_task_is_exited_once_its_container_is_stopped() -> None:
    deprovisioning = _task(lastStatus="DEPROVISIONING", containers=[{"name": "multinode", "lastStatus": "STOPPED"}])
    assert task_has_exited(deprovisioning, "multinode")
    assert not task_has_exited(_task(lastStatus="RUNNING", desiredStatus="RUNNING"), "multinode")
    stopping = _task(lastStatus="STOPPING", containers=[{"name": "multinode", "lastStatus": "RUNNING"}])
    assert not task_has_exited(stopping, "multinode")


# --- AWS errors, stubbed (no HTTP) ------------------------------------------------------------------


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FargateProvisioner, Stubber]]:
    with stubbed_provisioner(monkeypatch, FargateSettings.from_env(FULL_ENV)) as (provisioner, stubber):
        provisioner._task_definitions[IMAGE] = "arn:aws:ecs:eu-west-1:123456789012:task-definition/multinode-x:1"
        yield provisioner, stubber


def test_access_denied_names_the_permissions(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, stubber = stubbed
    stubber.add_client_error(
        "run_task",
        service_error_code="AccessDeniedException",
        service_message="User: arn:aws:sts::123456789012:assumed-role/w is not authorized to perform: ecs:RunTask",
        http_status_code=400,
    )
    with pytest.raises(ProvisionerError, match="AWS denied RunTask") as info:
        provisioner.start(spec())
    assert "iam:PassRole" in str(info.value) and "not authorized to perform: ecs:RunTask" in str(info.value)


def test_expired_credentials_are_a_clear_error(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, stubber = stubbed
    stubber.add_client_error("describe_tasks", service_error_code="ExpiredTokenException", http_status_code=400)
    with pytest.raises(ProvisionerError, match="rejected the control-plane worker's credentials"):
        provisioner.status("arn:aws:ecs:eu-west-1:123456789012:task/multinode/0123456789abcdef0123456789abcdef")


def test_throttling_that_outlasts_the_retries_stays_retryable(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, stubber = stubbed
    stubber.add_client_error("describe_tasks", service_error_code="ThrottlingException", http_status_code=400)
    with pytest.raises(ClientError, match="ThrottlingException"):  # not ProvisionerError: the activity retries
        provisioner.status("arn:aws:ecs:eu-west-1:123456789012:task/multinode/0123456789abcdef0123456789abcdef")
    # At RunTask, throttling means "wait for capacity" (tests/test_fargate_capacity.py).


def test_run_task_failures_become_a_provisioner_error(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, stubber = stubbed
    stubber.add_response(
        "run_task",
        {"tasks": [], "failures": [{"arn": "arn:aws:ecs:eu-west-1:1:cluster/multinode", "reason": "MISSING"}]},
    )
    with pytest.raises(ProvisionerError, match=r"ECS could not start a Fargate task .*\(1 vCPU, 3072 MiB\): MISSING"):
        provisioner.start(spec())


def test_oversized_environment_is_refused_before_calling_aws(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, _ = stubbed
    with pytest.raises(ProvisionerError, match="over ECS's limit of 8192.*MULTINODE_BIG"):
        provisioner.start(spec(environment={"MULTINODE_BIG": "x" * 9000, "SMALL": "1"}))


def test_missing_image_means_a_version_registered_for_local(stubbed: tuple[FargateProvisioner, Stubber]) -> None:
    provisioner, _ = stubbed
    with pytest.raises(ProvisionerError, match="registered for the local provisioner"):
        provisioner.start(spec(artifact={"code_digest": "c0de", "env_key": "e0e0"}))


# --- the provisioner against moto (or a real account) -----------------------------------------------


@pytest.fixture
def provisioner(fargate_settings: FargateSettings) -> FargateProvisioner:
    return FargateProvisioner(fargate_settings)


def test_start_launches_a_sized_tagged_task_and_stop_stops_it(
    provisioner: FargateProvisioner, fargate_settings: FargateSettings, aws_env: AwsTarget
) -> None:
    run_calls = captured_calls(provisioner, "RunTask")
    container_spec = spec(function_name="crunch*numbers", cpu=0.3, memory_mib=3000)
    arn = provisioner.start(container_spec)
    assert arn.startswith("arn:aws:ecs:") and ":task/" in arn
    ecs = aws_env.client("ecs")
    task = ecs.describe_tasks(cluster=fargate_settings.cluster, tasks=[arn], include=["TAGS"])["tasks"][0]
    assert task["launchType"] == "FARGATE" and task["startedBy"] == "multinode"
    assert task["overrides"]["cpu"] == "512" and task["overrides"]["memory"] == "3072"  # 0.3 vCPU, 3000 MiB
    (container_override,) = task["overrides"]["containerOverrides"]
    assert container_override["name"] == "multinode"
    assert {e["name"]: e["value"] for e in container_override["environment"]} == container_spec.environment
    assert {t["key"]: t["value"] for t in task["tags"]} == {
        "project": "demo",
        "version": "v3",
        "function": "crunch_numbers",  # sanitized
        "invocation": container_spec.invocation_id,
        "execution": container_spec.execution_id,
        "namespace": "default",
        "start": "0",
    }
    (run,) = run_calls
    assert run["clientToken"] == container_spec.execution_id
    assert run["networkConfiguration"] == {
        "awsvpcConfiguration": {
            "subnets": fargate_settings.subnets,
            "securityGroups": fargate_settings.security_groups,
            "assignPublicIp": "ENABLED" if fargate_settings.assign_public_ip else "DISABLED",
        }
    }
    details = {d["name"]: d["value"] for d in task["attachments"][0]["details"]}
    assert details["subnetId"] == fargate_settings.subnets[0]
    if not aws_env.real:  # a real ENI may still be attaching
        eni = aws_env.client("ec2").describe_network_interfaces(NetworkInterfaceIds=[details["networkInterfaceId"]])
        assert [g["GroupId"] for g in eni["NetworkInterfaces"][0]["Groups"]] == fargate_settings.security_groups

    definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
    assert definition["requiresCompatibilities"] == ["FARGATE"] and definition["networkMode"] == "awsvpc"
    assert definition["executionRoleArn"] == fargate_settings.execution_role_arn
    assert definition["taskRoleArn"] == fargate_settings.task_role_arn
    (container,) = definition["containerDefinitions"]
    assert container["name"] == "multinode" and container["image"] == IMAGE and container["essential"] is True
    assert container["command"] == CONTAINER_COMMAND and container["workingDirectory"] == CONTAINER_WORKDIR
    assert container["logConfiguration"] == {
        "logDriver": "awslogs",
        "options": {
            "awslogs-group": fargate_settings.log_group,
            "awslogs-region": fargate_settings.region,
            "awslogs-stream-prefix": "multinode",
        },
    }

    assert provisioner.status(arn).state == "running"
    provisioner.stop(arn)
    status = provisioner.status(arn)
    assert status.state == "exited" and STOP_REASON in status.reason
    provisioner.stop(arn)  # a no-op
    assert running_task_arns(ecs, fargate_settings.cluster) == []


def test_public_ip_setting_reaches_run_task(fargate_settings: FargateSettings) -> None:
    flipped = fargate_settings.model_copy(update={"assign_public_ip": not fargate_settings.assign_public_ip})
    provisioner = FargateProvisioner(flipped)
    run_calls = captured_calls(provisioner, "RunTask")
    arn = provisioner.start(spec())
    try:
        expected = "ENABLED" if flipped.assign_public_ip else "DISABLED"
        assert run_calls[0]["networkConfiguration"]["awsvpcConfiguration"]["assignPublicIp"] == expected
    finally:
        provisioner.stop(arn)


def test_retried_start_returns_the_same_task(
    provisioner: FargateProvisioner, fargate_settings: FargateSettings, aws_env: AwsTarget
) -> None:
    run_calls = captured_calls(provisioner, "RunTask")
    container_spec = spec()
    arn = provisioner.start(container_spec)
    try:
        assert provisioner.start(container_spec) == arn
        assert len(run_calls) == 1
        assert running_task_arns(aws_env.client("ecs"), fargate_settings.cluster) == [arn]
        if aws_env.real:
            # Another worker (nothing cached) retrying the start: ECS's clientToken returns the same task.
            # moto ignores clientToken, so this holds only on AWS.
            assert FargateProvisioner(fargate_settings).start(container_spec) == arn
    finally:
        provisioner.stop(arn)


def test_task_definition_is_registered_once_per_image(
    provisioner: FargateProvisioner, fargate_settings: FargateSettings, aws_env: AwsTarget
) -> None:
    image = f"{IMAGE}-{uuid.uuid4().hex[:8]}" if not aws_env.real else IMAGE
    registrations = captured_calls(provisioner, "RegisterTaskDefinition")
    arns = [provisioner.start(spec(artifact={"image": image})) for _ in range(2)]
    other = FargateProvisioner(fargate_settings)  # e.g. a restarted worker: nothing cached
    other_registrations = captured_calls(other, "RegisterTaskDefinition")
    arns.append(other.start(spec(artifact={"image": image})))
    try:
        ecs = aws_env.client("ecs")
        definitions = {
            ecs.describe_tasks(cluster=fargate_settings.cluster, tasks=[a])["tasks"][0]["taskDefinitionArn"]
            for a in arns
        }
        assert len(definitions) == 1
        assert len(registrations) <= 1 and other_registrations == []
        # Different settings (here the log group) need a new revision of the same family.
        changed = FargateProvisioner(
            fargate_settings.model_copy(update={"log_group": fargate_settings.log_group + "-b"})
        )
        assert changed._task_definition(image) not in definitions
        assert changed._task_definition(image).rsplit(":", 1)[0] == definitions.pop().rsplit(":", 1)[0]
    finally:
        for arn in arns:
            provisioner.stop(arn)


def test_status_calls_are_batched_across_watched_tasks(provisioner: FargateProvisioner) -> None:
    describes = captured_calls(provisioner, "DescribeTasks")
    arns = [provisioner.start(spec()) for _ in range(3)]
    try:
        assert [provisioner.status(arn).state for arn in arns] == ["running"] * 3
        assert len(describes) <= 3
        for described in provisioner._described.values():
            described.at -= 60  # every answer is old now
        describes.clear()
        assert provisioner.status(arns[0]).state == "running"
        assert len(describes) == 1 and sorted(describes[0]["tasks"]) == sorted(arns)  # one call for all three
        assert [provisioner.status(arn).state for arn in arns[1:]] == ["running"] * 2
        assert len(describes) == 1  # the others were refreshed by that call
    finally:
        for arn in arns:
            provisioner.stop(arn)
    describes.clear()
    assert provisioner.status(arns[0]).state == "exited"
    assert provisioner.status(arns[0]).state == "exited" and len(describes) <= 1  # STOPPED is final: cached


def test_a_task_ecs_does_not_know_counts_as_gone_after_a_grace(
    provisioner: FargateProvisioner, fargate_settings: FargateSettings
) -> None:
    """Right after RunTask, DescribeTasks may not know the task yet (ECS is eventually consistent)."""
    provisioner.missing_grace_seconds = 0.5
    unknown = f"arn:aws:ecs:{fargate_settings.region}:123456789012:task/{fargate_settings.cluster}/{uuid.uuid4().hex}"
    assert provisioner.status(unknown).state == "starting"  # not visible yet: provisioning waits for it
    status = exited(provisioner, unknown, timeout=30)
    assert status.exit_code is None and "ECS has no task" in status.reason
    provisioner.stop(unknown)  # nothing to stop


def test_unknown_cluster_is_a_clear_error(fargate_settings: FargateSettings) -> None:
    provisioner = FargateProvisioner(fargate_settings.model_copy(update={"cluster": "no-such-cluster"}))
    with pytest.raises(ProvisionerError, match="ECS cluster 'no-such-cluster' not found") as info:
        provisioner.start(spec())
    assert "MULTINODE_ECS_CLUSTER" in str(info.value) and "terraform output ecs_cluster" in str(info.value)


@pytest.mark.filterwarnings("ignore:Exception\\(InvalidSubnetIdError\\)")  # moto's own warning
def test_unknown_subnet_is_a_clear_error(fargate_settings: FargateSettings) -> None:
    provisioner = FargateProvisioner(fargate_settings.model_copy(update={"subnets": ["subnet-0000000000000dead"]}))
    with pytest.raises(ProvisionerError, match="network settings") as info:
        provisioner.start(spec())
    assert "subnet-0000000000000dead" in str(info.value) and "MULTINODE_SUBNETS" in str(info.value)


def test_no_credentials_is_a_clear_error(
    fargate_settings: FargateSettings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("AWS_WEB_IDENTITY_TOKEN_FILE", raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    provisioner = FargateProvisioner(fargate_settings)
    with pytest.raises(ProvisionerError, match="No AWS credentials") as info:
        provisioner.start(spec())
    assert "AWS_ACCESS_KEY_ID" in str(info.value)


def test_logs_are_read_back_from_cloudwatch_with_offsets(
    provisioner: FargateProvisioner, fargate_settings: FargateSettings, aws_env: AwsTarget
) -> None:
    task_arn = f"arn:aws:ecs:{fargate_settings.region}:123456789012:task/{fargate_settings.cluster}/{uuid.uuid4().hex}"
    assert provisioner.logs(task_arn) == ("", "")  # no stream yet
    assert provisioner.logs(task_arn, "f/123") == ("", "f/123")
    logs = aws_env.client("logs")
    stream = provisioner.log_stream(task_arn)
    assert stream == f"multinode/multinode/{task_arn.rsplit('/', 1)[-1]}"
    logs.create_log_stream(logGroupName=fargate_settings.log_group, logStreamName=stream)

    def put(*lines: str) -> None:
        now = int(time.time() * 1000)
        logs.put_log_events(
            logGroupName=fargate_settings.log_group,
            logStreamName=stream,
            logEvents=[{"timestamp": now, "message": line} for line in lines],
        )

    put("first line", "second line")
    text, offset = logs_with(provisioner, task_arn, "second line")
    assert text == "first line\nsecond line\n" and offset
    assert provisioner.logs(task_arn, offset) == ("", offset)  # nothing new: same offset
    put("third line")
    more, later = logs_with(provisioner, task_arn, "third line", offset)
    assert more == "third line\n" and later != offset
    assert provisioner.logs(task_arn) == ("first line\nsecond line\nthird line\n", later)
    task_id = task_arn.rsplit("/", 1)[-1]
    assert provisioner.logs(task_id)[0] == "first line\nsecond line\nthird line\n"  # a bare task id works too


def test_logs_by_execution_id_find_the_task(
    provisioner: FargateProvisioner, fargate_settings: FargateSettings, aws_env: AwsTarget
) -> None:
    """The SDK reads logs by execution id: a worker that did not start the task finds it by its tag."""
    container_spec = spec()
    arn = provisioner.start(container_spec)
    try:
        logs = aws_env.client("logs")
        stream = provisioner.log_stream(arn)
        try:
            logs.create_log_stream(logGroupName=fargate_settings.log_group, logStreamName=stream)
        except logs.exceptions.ResourceAlreadyExistsException:
            pass  # a real task's awslogs driver made it
        logs.put_log_events(
            logGroupName=fargate_settings.log_group,
            logStreamName=stream,
            logEvents=[{"timestamp": int(time.time() * 1000), "message": "found by execution id"}],
        )
        other = FargateProvisioner(fargate_settings)
        assert_eventually(lambda: "found by execution id\n" in other.logs(container_spec.execution_id)[0])
        assert other.status(arn).state == "running"
        assert other.logs("inv-unknown-1") == ("", "")
    finally:
        provisioner.stop(arn)
    assert "found by execution id\n" in FargateProvisioner(fargate_settings).logs(container_spec.execution_id)[0]


@pytest.mark.skipif(not REAL_AWS, reason="a real Fargate task (its image has no Multinode, so it fails)")
@pytest.mark.timeout(600)
def test_real_task_without_multinode_exits_with_an_error(provisioner: FargateProvisioner) -> None:
    arn = provisioner.start(spec(cpu=0.25, memory_mib=512))
    try:
        status = exited(provisioner, arn, timeout=480)
        assert status.exit_code == 1 and "exited with code 1" in status.reason
        logs_with(provisioner, arn, "No module named multinode")
    finally:
        provisioner.stop(arn)


# --- the fake data plane ----------------------------------------------------------------------------


@moto_only
def test_fake_data_plane_runs_a_task_and_stop_task_kills_it(
    provisioner: FargateProvisioner, fake_fargate: Callable[..., FakeFargate], tmp_path: Path
) -> None:
    image = script_image(
        tmp_path / "sleeper",
        """
        echo "started in $(pwd) with: $*"
        echo "GREETING=$GREETING PYTHONUNBUFFERED=$PYTHONUNBUFFERED"
        echo "a warning" >&2
        exec sleep 3600
        """,
    )
    fake = fake_fargate(lambda uri: image)
    arn = provisioner.start(spec())
    pid = fake.wait_started(arn)
    assert process_alive(pid)
    text, _ = logs_with(provisioner, arn, "a warning")
    assert f"started in {image.workdir} with: -m multinode._runtime.container\n" in text
    assert "GREETING=hello from the overrides PYTHONUNBUFFERED=1\n" in text
    assert provisioner.status(arn).state == "running"
    provisioner.stop(arn)  # returns once ECS reports the task stopped, as on Fargate
    assert not process_alive(pid), fake.errors
    assert fake.exit_codes.get(arn) == 143  # SIGTERM ended it
    status = provisioner.status(arn)
    assert status.state == "exited" and status.exit_code == 143
    assert status.reason == f"exited with code 143 (killed by SIGTERM) (ECS UserInitiated: {STOP_REASON})"


@moto_only
def test_task_that_exits_with_an_error_is_reported_with_exit_code_and_output(
    provisioner: FargateProvisioner, fake_fargate: Callable[..., FakeFargate], tmp_path: Path
) -> None:
    image = script_image(
        tmp_path / "failer",
        """
        echo "working"
        echo "Traceback (most recent call last): boom" >&2
        exit 3
        """,
    )
    fake_fargate(lambda uri: image)
    arn = provisioner.start(spec())
    status = exited(provisioner, arn)
    assert status.exit_code == 3
    assert status.reason == "exited with code 3 (ECS EssentialContainerExited: Essential container in task exited)"
    assert provisioner.logs(arn)[0] == "working\nTraceback (most recent call last): boom\n"
    provisioner.stop(arn)  # deprovisioning a task that ended keeps why it ended
    assert provisioner.status(arn).exit_code == 3


@moto_only
def test_fake_data_plane_leaves_no_process_behind(
    provisioner: FargateProvisioner, fake_fargate: Callable[..., FakeFargate], tmp_path: Path
) -> None:
    image = script_image(
        tmp_path / "forker",
        """
        sleep 3600 &
        echo "child $!" > child.pid
        exec sleep 3600
        """,
    )
    fake = fake_fargate(lambda uri: image)
    arn = provisioner.start(spec())
    pid = fake.wait_started(arn)
    child_pid_file = image.workdir / "child.pid"
    # The shell creates the file before it writes to it: read it once both words are there.
    child = int(
        assert_eventually(
            lambda: child_pid_file.is_file() and len(words := child_pid_file.read_text().split()) == 2 and words[1]
        )
    )
    provisioner.stop(arn)  # the whole task goes, its background process too
    assert_eventually(lambda: not process_alive(pid) and not process_alive(child), timeout=30)
    second = provisioner.start(spec())
    second_pid = fake.wait_started(second)
    fake.stop()  # shutting the fake down kills what still runs
    assert not process_alive(second_pid) and fake.alive_pids() == []
    provisioner.stop(second)


# --- end to end: invocations on the fargate backend (moto + fake data plane + Temporal) -------------

E2E_TASKS = """
import os
import time
from pathlib import Path

from multinode import Multinode
from multinode.errors import InvocationCancelledError

mn = Multinode()

@mn.function(cpu=0.5, memory="1 GiB")
def add(a, b):
    print(f"adding {a} and {b}", flush=True)
    return a + b

@mn.function()
def waits_for_cancel():
    try:
        print("started", flush=True)
        time.sleep(3600)
    except InvocationCancelledError:
        print("Invocation is cancelled - gracefully terminating", flush=True)
        raise

@mn.function()
def reports_environment():
    import json
    return {
        "temporal_env": sorted(k for k in os.environ if k.startswith("TEMPORAL_")),
        "profile": json.loads(os.environ["MULTINODE_TEMPORAL_PROFILE_JSON"]),
        "child": add.call_remote(1, 2),  # through the container's agent
    }

@mn.function(max_retries=1)
def dies_once(counter):
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n == 1:
        Path(counter + ".pid").write_text(str(os.getpid()))
        time.sleep(3600)
    return f"attempt {n}"
"""


@pytest.fixture
def settings(settings: MultinodeSettings, fargate_settings: FargateSettings, monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """conftest's settings, with the fargate provisioner: the worker fixture then runs a fargate worker."""
    if REAL_AWS:
        pytest.skip("end-to-end tests run containers through the fake data plane (moto only)")
    for name, value in {"MULTINODE_PROVISIONER": "fargate", **fargate_settings.to_env()}.items():
        monkeypatch.setenv(name, value)
    return MultinodeSettings.from_env()


@pytest.fixture
def fargate_stack(
    settings: MultinodeSettings,
    worker: ThreadWorker,
    fake_fargate: Callable[..., FakeFargate],
    fargate_settings: FargateSettings,
    project_name: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
):  # noqa: ANN201
    """``register(files) -> VersionRecord`` for the fargate backend, with a fake data plane that runs each
    registered version's image from the local version store."""
    # The worker runs in this process: it looks at its tasks every second instead of every 5 s (ECS's
    # rate limits do not apply to moto), which only makes the tests quicker.
    monkeypatch.setattr(FargateProvisioner, "status_poll_interval", 1.0)
    store = LocalVersionStore(settings.home)
    images: dict[str, LocalImage] = {}

    def resolve(uri: str) -> LocalImage:
        return images[uri]

    fake = fake_fargate(resolve)

    def register(files: dict[str, str]) -> VersionRecord:
        import boto3

        from multinode.artifacts.image import write_build_context
        from multinode.control_plane.registration import register_async
        from tests import ecr

        folder = write_tasks(tmp_path / f"tasks-{uuid.uuid4().hex[:6]}", files)
        # The image is in (moto's) ECR under a tag, as `docker push` leaves it; the version records its digest.
        client = boto3.client("ecr", region_name=fargate_settings.region)
        repository = ecr.repository(client, "multinode-test")
        tag = uuid.uuid4().hex[:12]
        digest = ecr.push(client, repository, tag)
        record = asyncio.run(register_async(folder, project_name, settings, image=f"{repository}:{tag}"))
        assert record.provisioner == "fargate" and record.artifact["image"] == f"{repository}@{digest}"
        # The image's tasks folder is its build context's: without .env (its values come from the registry).
        context = tmp_path / f"image-{tag}"
        write_build_context(folder, context)
        store.link_runtime()
        images[record.artifact["image"]] = LocalImage(
            workdir=context / "tasks", python=store.env_python(record.artifact["env_key"])
        )
        return record

    register.fake = fake  # type: ignore[attr-defined]
    return register


@moto_only
def test_fargate_invocation_succeeds(
    fargate_stack,
    project_name: str,
    fargate_settings: FargateSettings,
    aws_env: AwsTarget,
    settings: MultinodeSettings,
) -> None:
    fargate_stack({"main.py": E2E_TASKS})
    fn = get_deployed_function(project_name, "add")
    invocation_id = fn.start(2, 3)
    assert fn.await_result(invocation_id, timeout=90) == 5
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.SUCCEEDED and invocation.terminated
    # CloudWatch (and the fake, which writes a stopped task's last lines on its next poll) may trail the result.
    assert_eventually(lambda: "adding 2 and 3" in fn.logs(invocation_id), timeout=30, interval=0.5)
    # Read through the task queue's log reader (a query), not a workflow per chunk.
    types = workflow_types(settings)
    assert "MultinodeLogs" not in types and types.count(LOG_READER_WORKFLOW) == 1, types
    ecs = aws_env.client("ecs")
    arns = ecs.list_tasks(cluster=fargate_settings.cluster, desiredStatus="STOPPED")["taskArns"]
    (task,) = ecs.describe_tasks(cluster=fargate_settings.cluster, tasks=arns, include=["TAGS"])["tasks"]
    assert (task["overrides"]["cpu"], task["overrides"]["memory"]) == ("512", "1024")
    assert {t["key"]: t["value"] for t in task["tags"]}["execution"] == invocation.executions[0].execution_id
    assert running_task_arns(ecs, fargate_settings.cluster) == []


@moto_only
def test_fargate_invocation_cancel_raises_in_user_code(fargate_stack, project_name: str) -> None:
    fargate_stack({"main.py": E2E_TASKS})
    fn = get_deployed_function(project_name, "waits_for_cancel")
    invocation_id = fn.start()
    assert_eventually(lambda: "started" in fn.logs(invocation_id), timeout=60, interval=0.5)
    fn.cancel(invocation_id)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(invocation_id, timeout=60)
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.CANCELLED and invocation.terminated
    assert_eventually(
        lambda: "Invocation is cancelled - gracefully terminating" in fn.logs(invocation_id), timeout=30, interval=0.5
    )


@moto_only
def test_fargate_user_code_holds_no_credential_and_nests_through_its_agent(
    fargate_stack, project_name: str, settings: MultinodeSettings
) -> None:
    fargate_stack({"main.py": E2E_TASKS})
    report = get_deployed_function(project_name, "reports_environment").call_remote()
    assert report["child"] == 3
    assert report["temporal_env"] == []
    assert report["profile"] == {"address": settings.temporal_address, "namespace": settings.temporal_namespace}


def test_fargate_invocation_is_retried_after_its_task_dies(fargate_stack, project_name: str, tmp_path: Path) -> None:
    fargate_stack({"main.py": E2E_TASKS})
    fn = get_deployed_function(project_name, "dies_once")
    counter = tmp_path / "counter"
    invocation_id = fn.start(str(counter))
    pid_file = Path(str(counter) + ".pid")
    pid = int(assert_eventually(lambda: pid_file.exists() and pid_file.read_text(), timeout=60))
    # The user code runs in a child of the task's main process (the container's agent): kill the task.
    agent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    os.kill(agent, 9)
    assert fn.await_result(invocation_id, timeout=90) == "attempt 2"
    invocation = fn.get(invocation_id)
    assert invocation.num_failed_attempts == 1
    first = invocation.executions[0]
    assert first.status == InvocationStatus.FAILED and first.error is not None
    assert "exited with code 137" in first.error.message and "SIGKILL" in first.error.message
    assert_eventually(lambda: not Path(f"/proc/{pid}").exists(), timeout=10, message="the user process ended")
