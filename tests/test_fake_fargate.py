"""The stand-in data plane (tests/fake_fargate.py) behaves as ECS does: what DescribeTasks shows while a
task starts, runs, exits or is stopped (SIGTERM, ``stopTimeout``, SIGKILL), the task definition's
``secrets``, capacity failures and Spot interruptions. Tasks are registered and run with boto3 directly
against moto (tests/test_fargate.py runs them through the provisioner)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from multinode.provisioner.fargate import FargateProvisioner
from multinode.provisioner.fargate_settings import FargateSettings
from tests.aws import (  # noqa: F401 - fixtures
    AwsTarget,
    fixture_aws_env,
    fixture_aws_network,
    fixture_aws_target,
    fixture_fake_fargate,
    fixture_fargate_settings,
    moto_only,
)
from tests.fake_fargate import (
    CAPACITY_UNAVAILABLE,
    EXITED_REASON,
    SECRETS_ERROR,
    SPOT_INTERRUPTED,
    FakeFargate,
    LocalImage,
    process_alive,
    script_image,
)
from tests.helpers import assert_eventually

pytestmark = [pytest.mark.timeout(120), moto_only]

# A script that marks itself ready once its signal handling is in place (a signal that comes earlier
# would meet the shell's defaults).
GRACEFUL = """
trap 'echo "got SIGTERM"; exit 0' TERM
touch ready
while :; do sleep 0.1; done
"""
STUBBORN = """
trap '' TERM
touch ready
exec sleep 3600
"""
"""Ignores SIGTERM (an ignored signal stays ignored across exec): only SIGKILL ends it."""
SLEEPER = """
touch ready
exec sleep 3600
"""


class Tasks:
    """Registers task definitions and runs tasks on the test's cluster, as the provisioner would."""

    def __init__(self, aws: AwsTarget, settings: FargateSettings) -> None:
        self.ecs = aws.client("ecs")
        self.logs = aws.client("logs")
        self.settings = settings

    def definition(
        self, image: str, *, stop_timeout: int | None = 2, secrets: list[dict[str, str]] | None = None
    ) -> str:
        container: dict[str, Any] = {
            "name": self.settings.container_name,
            "image": image,
            "essential": True,
            "command": ["python", "-m", "multinode._runtime.container"],
            "memoryReservation": 512,
            "environment": [{"name": "PLAIN", "value": "plain value"}],
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": self.settings.log_group,
                    "awslogs-region": self.settings.region,
                    "awslogs-stream-prefix": "multinode",
                },
            },
        }
        if stop_timeout is not None:
            container["stopTimeout"] = stop_timeout
        if secrets:
            container["secrets"] = secrets
        return str(
            self.ecs.register_task_definition(
                family=f"multinode-test-fake-{uuid.uuid4().hex[:8]}",
                requiresCompatibilities=["FARGATE"],
                networkMode="awsvpc",
                cpu="256",
                memory="512",
                executionRoleArn=self.settings.execution_role_arn,
                containerDefinitions=[container],
            )["taskDefinition"]["taskDefinitionArn"]
        )

    def run(self, definition: str, **kwargs: Any) -> dict[str, Any]:
        """RunTask's answer for one task (launch type FARGATE unless a capacity provider strategy is given)."""
        if "capacityProviderStrategy" not in kwargs:
            kwargs["launchType"] = "FARGATE"
        network = {
            "awsvpcConfiguration": {
                "subnets": self.settings.subnets,
                "securityGroups": self.settings.security_groups,
                "assignPublicIp": "DISABLED",
            }
        }
        answer = self.ecs.run_task(
            cluster=self.settings.cluster, taskDefinition=definition, networkConfiguration=network, **kwargs
        )
        assert not answer["failures"], answer["failures"]
        return dict(answer["tasks"][0])

    def describe(self, arn: str) -> dict[str, Any]:
        return dict(self.ecs.describe_tasks(cluster=self.settings.cluster, tasks=[arn])["tasks"][0])

    def wait_status(self, arn: str, last_status: str, timeout: float = 30.0) -> dict[str, Any]:
        def check() -> dict[str, Any] | None:
            task = self.describe(arn)
            return task if task["lastStatus"] == last_status else None

        task = assert_eventually(check, timeout=timeout, interval=0.05, message=f"{arn} {last_status}")
        assert task is not None
        return task

    def log_text(self, arn: str) -> str:
        stream = f"multinode/{self.settings.container_name}/{arn.rsplit('/', 1)[-1]}"
        events = self.logs.get_log_events(
            logGroupName=self.settings.log_group, logStreamName=stream, startFromHead=True
        )["events"]
        return "".join(e["message"] + "\n" for e in events)


@pytest.fixture
def tasks(aws_env: AwsTarget, fargate_settings: FargateSettings) -> Tasks:
    return Tasks(aws_env, fargate_settings)


def wait_ready(image: LocalImage) -> None:
    assert_eventually(lambda: (image.workdir / "ready").exists(), timeout=30, message="the script is ready")


def test_fake_data_plane_shows_a_task_that_exits_as_ecs_does(
    tasks: Tasks, fake_fargate: Callable[..., FakeFargate], tmp_path: Path
) -> None:
    image = script_image(
        tmp_path / "exits",
        """
        echo "PLAIN=$PLAIN"
        while [ ! -f go ]; do sleep 0.05; done
        exit 3
        """,
    )
    fake = fake_fargate(lambda uri: image)
    started = tasks.run(tasks.definition("exits"))
    arn = started["taskArn"]
    assert started["lastStatus"] == "PROVISIONING" and started["launchType"] == "FARGATE"
    fake.wait_started(arn)
    running = tasks.wait_status(arn, "RUNNING")
    (container,) = running["containers"]
    assert container["lastStatus"] == "RUNNING" and "exitCode" not in container
    assert "stopCode" not in running and "startedAt" in running and "stoppedAt" not in running
    (image.workdir / "go").touch()
    stopped = tasks.wait_status(arn, "STOPPED")
    (container,) = stopped["containers"]
    assert (container["lastStatus"], container["exitCode"]) == ("STOPPED", 3)
    assert (stopped["desiredStatus"], stopped["stopCode"], stopped["stoppedReason"]) == (
        "STOPPED",
        "EssentialContainerExited",
        EXITED_REASON,
    )
    assert "stoppedAt" in stopped and "executionStoppedAt" in stopped
    assert tasks.log_text(arn) == "PLAIN=plain value\n"
    status = FargateProvisioner(tasks.settings).status(arn)
    assert (status.state, status.exit_code) == ("exited", 3)
    assert status.reason == f"exited with code 3 (ECS EssentialContainerExited: {EXITED_REASON})"


def test_fake_data_plane_stop_task_sends_sigterm_then_sigkill_after_the_stop_timeout(
    tasks: Tasks, fake_fargate: Callable[..., FakeFargate], tmp_path: Path
) -> None:
    images = {
        "graceful": script_image(tmp_path / "graceful", GRACEFUL),
        "stubborn": script_image(tmp_path / "stubborn", STUBBORN),
        "patient": script_image(tmp_path / "patient", STUBBORN),
    }
    fake = fake_fargate(images.__getitem__)
    graceful = tasks.run(tasks.definition("graceful"))["taskArn"]
    stubborn = tasks.run(tasks.definition("stubborn", stop_timeout=3))["taskArn"]
    patient = tasks.run(tasks.definition("patient", stop_timeout=None))["taskArn"]  # Fargate's default: 30 s
    pids = {arn: fake.wait_started(arn) for arn in (graceful, stubborn, patient)}
    for image in images.values():
        wait_ready(image)
    stopped_at = time.monotonic()
    for arn in (graceful, stubborn, patient):
        tasks.ecs.stop_task(cluster=tasks.settings.cluster, task=arn, reason="enough")
    # ECS records the request at once; the task stops when its container has.
    asked = tasks.describe(stubborn)
    assert (asked["desiredStatus"], asked["stopCode"], asked["stoppedReason"]) == ("STOPPED", "UserInitiated", "enough")
    assert asked["lastStatus"] != "STOPPED" and "exitCode" not in asked["containers"][0]
    tasks.wait_status(stubborn, "STOPPING", timeout=2.5)

    done = tasks.wait_status(graceful, "STOPPED")
    assert (done["stopCode"], done["stoppedReason"], done["containers"][0]["exitCode"]) == (
        "UserInitiated",
        "enough",
        0,
    )
    assert tasks.log_text(graceful) == "got SIGTERM\n"

    killed = tasks.wait_status(stubborn, "STOPPED")
    assert time.monotonic() - stopped_at >= 3.0  # its stopTimeout
    assert (killed["stopCode"], killed["containers"][0]["exitCode"]) == ("UserInitiated", 137)
    assert not process_alive(pids[stubborn])

    # Without a stopTimeout, Fargate waits 30 s: the patient one still runs.
    assert process_alive(pids[patient]) and tasks.describe(patient)["lastStatus"] == "STOPPING"
    fake.stop()  # the data plane goes away: it kills what runs, and the tasks being stopped are stopped
    gone = tasks.describe(patient)
    assert (gone["lastStatus"], gone["containers"][0]["exitCode"]) == ("STOPPED", 137)
    assert not process_alive(pids[patient])


def test_fake_data_plane_injects_secrets_from_secrets_manager_and_ssm(
    tasks: Tasks, aws_env: AwsTarget, fake_fargate: Callable[..., FakeFargate], tmp_path: Path
) -> None:
    secretsmanager = aws_env.client("secretsmanager")
    ssm = aws_env.client("ssm")
    name = f"multinode-test-{uuid.uuid4().hex[:8]}"
    secret = secretsmanager.create_secret(Name=name, SecretString='{"profile": "{\\"a\\": 1}", "n": 5}')["ARN"]
    ssm.put_parameter(Name=f"/{name}/key", Value="k3y", Type="SecureString")
    parameter_arn = ssm.get_parameter(Name=f"/{name}/key")["Parameter"]["ARN"]
    image = script_image(
        tmp_path / "env",
        """
        echo "WHOLE=$WHOLE"
        echo "ONE_KEY=$ONE_KEY"
        echo "NUMBER=$NUMBER"
        echo "SSM_NAME=$SSM_NAME"
        echo "SSM_ARN=$SSM_ARN"
        """,
    )
    fake = fake_fargate(lambda uri: image)
    try:
        definition = tasks.definition(
            "env",
            secrets=[
                {"name": "WHOLE", "valueFrom": secret},
                {"name": "ONE_KEY", "valueFrom": f"{secret}:profile::"},
                {"name": "NUMBER", "valueFrom": f"{secret}:n::"},
                {"name": "SSM_NAME", "valueFrom": f"/{name}/key"},
                {"name": "SSM_ARN", "valueFrom": parameter_arn},
            ],
        )
        arn = tasks.run(definition)["taskArn"]
        stopped = tasks.wait_status(arn, "STOPPED")
        assert stopped["containers"][0]["exitCode"] == 0
        assert tasks.log_text(arn) == (
            'WHOLE={"profile": "{\\"a\\": 1}", "n": 5}\nONE_KEY={"a": 1}\nNUMBER=5\nSSM_NAME=k3y\nSSM_ARN=k3y\n'
        )

        # A secret ECS cannot read: the task fails to start, and nothing runs.
        unreadable = {
            "missing secret": (f"{secret}x", "unable to retrieve secret from asm"),
            "missing key": (f"{secret}:nope::", "did not contain json key nope"),
            "missing parameter": (f"/{name}/nope", "unable to retrieve secrets from ssm"),
        }
        for what, (value_from, expected) in unreadable.items():
            arn = tasks.run(tasks.definition("env", secrets=[{"name": "S", "valueFrom": value_from}]))["taskArn"]
            failed = tasks.wait_status(arn, "STOPPED")
            assert failed["stopCode"] == "TaskFailedToStart", what
            assert failed["stoppedReason"].startswith(SECRETS_ERROR) and expected in failed["stoppedReason"], what
            assert "exitCode" not in failed["containers"][0] and arn not in fake.pids, what
        status = FargateProvisioner(tasks.settings).status(arn)
        assert status.exit_code is None and status.reason.startswith(
            "the task failed to start (ECS TaskFailedToStart: "
        )
        assert "unable to pull secrets or registry auth" in status.reason
    finally:
        secretsmanager.delete_secret(SecretId=secret, ForceDeleteWithoutRecovery=True)
        ssm.delete_parameter(Name=f"/{name}/key")


def test_fake_data_plane_fail_next_starts_stops_tasks_for_capacity(
    tasks: Tasks, fake_fargate: Callable[..., FakeFargate], tmp_path: Path
) -> None:
    image = script_image(tmp_path / "sleeper", SLEEPER)
    fake = fake_fargate(lambda uri: image)
    fake.fail_next_starts(2)
    definition = tasks.definition("sleeper")
    failed = [tasks.run(definition)["taskArn"] for _ in range(2)]
    started = tasks.run(definition)["taskArn"]
    for arn in failed:
        task = tasks.wait_status(arn, "STOPPED")
        assert (task["stopCode"], task["stoppedReason"]) == ("TaskFailedToStart", CAPACITY_UNAVAILABLE)
        assert task["containers"][0]["lastStatus"] == "STOPPED" and "exitCode" not in task["containers"][0]
        assert "startedAt" not in task and arn not in fake.pids
        status = FargateProvisioner(tasks.settings).status(arn)
        assert status.state == "exited" and status.exit_code is None and CAPACITY_UNAVAILABLE in status.reason
    fake.wait_started(started)  # the third one gets capacity
    assert tasks.wait_status(started, "RUNNING")["containers"][0]["lastStatus"] == "RUNNING"
    tasks.ecs.stop_task(cluster=tasks.settings.cluster, task=started, reason="done")
    tasks.wait_status(started, "STOPPED")


def test_fake_data_plane_runs_fargate_spot_and_interrupts_it(
    tasks: Tasks, fake_fargate: Callable[..., FakeFargate], tmp_path: Path
) -> None:
    cluster = tasks.ecs.describe_clusters(clusters=[tasks.settings.cluster])["clusters"][0]
    assert cluster["capacityProviders"] == ["FARGATE", "FARGATE_SPOT"]
    image = script_image(tmp_path / "graceful", GRACEFUL)
    fake = fake_fargate(lambda uri: image)
    definition = tasks.definition("graceful")
    spot = [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]
    arn = tasks.run(definition, capacityProviderStrategy=spot)["taskArn"]
    fake.wait_started(arn)
    running = tasks.wait_status(arn, "RUNNING")
    assert (running["capacityProviderName"], running["launchType"]) == ("FARGATE_SPOT", "FARGATE")
    wait_ready(image)
    fake.interrupt(arn)
    stopped = tasks.wait_status(arn, "STOPPED")
    assert (stopped["stopCode"], stopped["stoppedReason"]) == ("SpotInterruption", SPOT_INTERRUPTED)
    assert stopped["containers"][0]["exitCode"] == 0 and tasks.log_text(arn) == "got SIGTERM\n"

    # As on ECS, a strategy naming a provider the cluster lacks is refused.
    tasks.ecs.put_cluster_capacity_providers(
        cluster=tasks.settings.cluster,
        capacityProviders=["FARGATE"],
        defaultCapacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1}],
    )
    with pytest.raises(ClientError, match="InvalidParameterException.*not associated with the cluster"):
        tasks.run(definition, capacityProviderStrategy=spot)


def test_fake_data_plane_deprovisions_for_a_while_when_asked(
    tasks: Tasks, fake_fargate: Callable[..., FakeFargate], tmp_path: Path
) -> None:
    image = script_image(tmp_path / "quick", "exit 0\n")
    fake_fargate(lambda uri: image, deprovision_seconds=1.0)
    arn = tasks.run(tasks.definition("quick"))["taskArn"]
    deprovisioning = tasks.wait_status(arn, "DEPROVISIONING")
    assert deprovisioning["containers"][0]["lastStatus"] == "STOPPED" and "stoppedAt" not in deprovisioning
    status = FargateProvisioner(tasks.settings).status(arn)
    assert (status.state, status.exit_code) == ("exited", 0)  # the container is gone: no need to wait
    assert "stoppedAt" in tasks.wait_status(arn, "STOPPED")
