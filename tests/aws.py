"""AWS fixtures: moto's server over real HTTP on loopback, or a real account with MULTINODE_TEST_REAL_AWS=1.

Import the fixtures into a test module: ``from tests.aws import fixture_aws_env, ...`` (each
``fixture_NAME`` is the fixture ``NAME``). With moto, every test gets a
cluster and log group of its own in one shared moto server; with a real account, the tests create and
delete their own VPC, roles, clusters and log groups, using the credentials and region of the
environment (``AWS_PROFILE`` or keys; ``MULTINODE_AWS_REGION``, ``AWS_REGION`` or ``AWS_DEFAULT_REGION``).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.request
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.stub import Stubber

from multinode.provisioner.fargate import FargateProvisioner
from multinode.provisioner.fargate_settings import FargateSettings
from tests.fake_fargate import FakeFargate, LocalImage

REAL_AWS = os.environ.get("MULTINODE_TEST_REAL_AWS") == "1"
"""Run the AWS tests against the account of the environment instead of moto."""
MOTO_REGION = "us-east-1"
EXECUTION_ROLE_POLICY = json.dumps(
    {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Action": [
                    "ecr:GetAuthorizationToken",
                    "ecr:BatchCheckLayerAvailability",
                    "ecr:GetDownloadUrlForLayer",
                    "ecr:BatchGetImage",
                    "logs:CreateLogStream",
                    "logs:PutLogEvents",
                ],
                "Resource": "*",
            },
            {
                "Effect": "Allow",
                "Action": "secretsmanager:GetSecretValue",
                "Resource": "arn:aws:secretsmanager:*:*:secret:multinode-test-*",
            },
        ],
    }
)
"""What AmazonECSTaskExecutionRolePolicy grants (inline: moto does not load AWS managed policies), and
reading the tests' container secrets (``secrets`` of the task definitions)."""
CLUSTER_CAPACITY_PROVIDERS = ["FARGATE", "FARGATE_SPOT"]
"""The test clusters' capacity providers, as the Terraform module's (FARGATE the default)."""

moto_only = pytest.mark.skipif(REAL_AWS, reason="needs moto (a fake data plane runs the tasks as local processes)")


@dataclass
class AwsTarget:
    """Where the AWS tests send their calls."""

    region: str
    endpoint_url: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    """Environment that points boto3 at it (empty for a real account: the environment already does)."""

    @property
    def real(self) -> bool:
        return self.endpoint_url is None

    def client(self, service: str) -> Any:
        kwargs: dict[str, Any] = {"region_name": self.region}
        if self.endpoint_url is not None:
            kwargs.update(
                endpoint_url=self.endpoint_url,
                aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"],
            )
        return boto3.session.Session().client(service, **kwargs)


def _moto_api(endpoint_url: str, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{endpoint_url}/moto-api/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:  # moto's first request loads its backends
        response.read()


@pytest.fixture(scope="session", name="aws_target")
def fixture_aws_target() -> Iterator[AwsTarget]:
    """moto's server on 127.0.0.1 and a free port for the session (or the real account)."""
    if REAL_AWS:
        region = os.environ.get("MULTINODE_AWS_REGION") or os.environ.get("AWS_REGION")
        region = region or os.environ.get("AWS_DEFAULT_REGION")
        if not region:
            pytest.fail("MULTINODE_TEST_REAL_AWS=1 needs a region: set AWS_REGION.")
        yield AwsTarget(region=region)
        return
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    # Port 0: the server binds a free port itself (a port picked beforehand may be taken before the bind,
    # and then start() waits forever for a server that failed).
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    endpoint_url = f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    # moto moves an ECS task from RUNNING towards STOPPED by itself, one step per DescribeTasks. On
    # Fargate a task runs until its container exits or StopTask: make moto's tasks wait for StopTask.
    _moto_api(
        endpoint_url,
        "state-manager/set-transition",
        {"model_name": "ecs::task", "transition": {"progression": "manual", "times": 10**9}},
    )
    env = {
        "AWS_ENDPOINT_URL": endpoint_url,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": MOTO_REGION,
        "AWS_REGION": MOTO_REGION,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    try:
        yield AwsTarget(region=MOTO_REGION, endpoint_url=endpoint_url, env=env)
    finally:
        server.stop()


_AWS_ENV_CLEARED = (
    "AWS_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_ROLE_ARN",
)


@pytest.fixture(name="aws_env")
def fixture_aws_env(aws_target: AwsTarget, monkeypatch: pytest.MonkeyPatch) -> AwsTarget:
    """Point boto3 in this process at the target: AWS_ENDPOINT_URL, dummy keys and region for moto."""
    if not aws_target.real:
        for name in _AWS_ENV_CLEARED:
            monkeypatch.delenv(name, raising=False)
        for name, value in aws_target.env.items():
            monkeypatch.setenv(name, value)
    return aws_target


@dataclass(frozen=True)
class AwsNetwork:
    vpc_id: str
    subnet_ids: list[str]
    security_group_id: str
    execution_role_arn: str
    task_role_arn: str
    public: bool
    """Whether tasks need a public IP to reach the internet (real account: public subnet, no NAT)."""


def _retry_cleanup(action: Callable[[], Any], what: str, timeout: float = 300.0) -> None:
    """Best-effort deletion (a real account releases Fargate network interfaces minutes late)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            action()
            return
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if "NotFound" in code or code == "NoSuchEntity":
                return
            if time.monotonic() > deadline:
                warnings.warn(f"could not delete {what}: {exc}", stacklevel=2)
                return
            time.sleep(10)


@pytest.fixture(scope="session", name="aws_network")
def fixture_aws_network(aws_target: AwsTarget) -> Iterator[AwsNetwork]:
    """A VPC with one subnet and a security group, and the two task roles (for the whole session)."""
    ec2 = aws_target.client("ec2")
    iam = aws_target.client("iam")
    suffix = uuid.uuid4().hex[:8]
    cleanups: list[tuple[str, Callable[[], Any]]] = []
    try:
        vpc_id = ec2.create_vpc(CidrBlock="10.42.0.0/16")["Vpc"]["VpcId"]
        cleanups.append((f"VPC {vpc_id}", lambda: ec2.delete_vpc(VpcId=vpc_id)))
        ec2.create_tags(Resources=[vpc_id], Tags=[{"Key": "Name", "Value": f"multinode-test-{suffix}"}])
        ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsSupport={"Value": True})
        ec2.modify_vpc_attribute(VpcId=vpc_id, EnableDnsHostnames={"Value": True})
        subnet_id = ec2.create_subnet(VpcId=vpc_id, CidrBlock="10.42.1.0/24")["Subnet"]["SubnetId"]
        cleanups.append((f"subnet {subnet_id}", lambda: ec2.delete_subnet(SubnetId=subnet_id)))
        group_id = ec2.create_security_group(
            GroupName=f"multinode-test-{suffix}", Description="Multinode tests: egress only", VpcId=vpc_id
        )["GroupId"]
        cleanups.append((f"security group {group_id}", lambda: ec2.delete_security_group(GroupId=group_id)))
        if aws_target.real:
            # Public subnet: the tasks pull their image from a public registry through an internet gateway.
            gateway_id = ec2.create_internet_gateway()["InternetGateway"]["InternetGatewayId"]
            cleanups.append(
                (f"gateway {gateway_id}", lambda: ec2.delete_internet_gateway(InternetGatewayId=gateway_id))
            )
            ec2.attach_internet_gateway(InternetGatewayId=gateway_id, VpcId=vpc_id)
            cleanups.append(
                (
                    f"gateway attachment {gateway_id}",
                    lambda: ec2.detach_internet_gateway(InternetGatewayId=gateway_id, VpcId=vpc_id),
                )
            )
            table_id = ec2.create_route_table(VpcId=vpc_id)["RouteTable"]["RouteTableId"]
            cleanups.append((f"route table {table_id}", lambda: ec2.delete_route_table(RouteTableId=table_id)))
            ec2.create_route(RouteTableId=table_id, DestinationCidrBlock="0.0.0.0/0", GatewayId=gateway_id)
            association = ec2.associate_route_table(RouteTableId=table_id, SubnetId=subnet_id)["AssociationId"]
            cleanups.append(
                (f"route association {association}", lambda: ec2.disassociate_route_table(AssociationId=association))
            )
        trust = json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Principal": {"Service": "ecs-tasks.amazonaws.com"}, "Action": "sts:AssumeRole"}
                ],
            }
        )
        execution_role = f"multinode-test-execution-{suffix}"
        execution_arn = iam.create_role(RoleName=execution_role, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        cleanups.append((f"role {execution_role}", lambda: iam.delete_role(RoleName=execution_role)))
        iam.put_role_policy(RoleName=execution_role, PolicyName="pull-and-log", PolicyDocument=EXECUTION_ROLE_POLICY)
        cleanups.append(
            (
                f"policy of {execution_role}",
                lambda: iam.delete_role_policy(RoleName=execution_role, PolicyName="pull-and-log"),
            )
        )
        task_role = f"multinode-test-task-{suffix}"
        task_arn = iam.create_role(RoleName=task_role, AssumeRolePolicyDocument=trust)["Role"]["Arn"]
        cleanups.append((f"role {task_role}", lambda: iam.delete_role(RoleName=task_role)))
        if aws_target.real:
            time.sleep(10)  # IAM is eventually consistent: ECS may not see a brand-new role yet
        yield AwsNetwork(
            vpc_id=vpc_id,
            subnet_ids=[subnet_id],
            security_group_id=group_id,
            execution_role_arn=execution_arn,
            task_role_arn=task_arn,
            public=aws_target.real,
        )
    finally:
        for what, action in reversed(cleanups):
            _retry_cleanup(action, what)


@contextmanager
def stubbed_provisioner(
    monkeypatch: pytest.MonkeyPatch, settings: FargateSettings
) -> Iterator[tuple[FargateProvisioner, Stubber]]:
    """A Fargate provisioner whose ECS client answers from botocore's Stubber, without HTTP: for the error
    shapes moto cannot produce. Dummy credentials; no endpoint."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_EC2_METADATA_DISABLED": "true",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    provisioner = FargateProvisioner(settings)
    with Stubber(provisioner._ecs) as stubber:
        yield provisioner, stubber


def running_task_arns(ecs: Any, cluster: str) -> list[str]:
    arns: list[str] = []
    for page in ecs.get_paginator("list_tasks").paginate(cluster=cluster, desiredStatus="RUNNING"):
        arns.extend(page["taskArns"])
    return arns


@pytest.fixture(name="fargate_settings")
def fixture_fargate_settings(aws_env: AwsTarget, aws_network: AwsNetwork) -> Iterator[FargateSettings]:
    """A cluster (capacity providers FARGATE and FARGATE_SPOT), log group and container secret of this
    test's own, as FargateSettings; stops what the test left running.

    The container secret (``container_secret_arn``, a Secrets Manager secret) holds ``{}``: a test whose
    containers need their Temporal profile puts the real value (``mn container-secret``'s JSON) there."""
    ecs = aws_env.client("ecs")
    logs = aws_env.client("logs")
    secrets = aws_env.client("secretsmanager")
    name = f"multinode-test-{uuid.uuid4().hex[:10]}"
    ecs.create_cluster(
        clusterName=name,
        capacityProviders=CLUSTER_CAPACITY_PROVIDERS,
        defaultCapacityProviderStrategy=[{"capacityProvider": "FARGATE", "weight": 1}],
    )
    log_group = f"/multinode-test/{name}"
    logs.create_log_group(logGroupName=log_group)
    if aws_env.real:
        logs.put_retention_policy(logGroupName=log_group, retentionInDays=1)
    secret_arn = secrets.create_secret(Name=name, SecretString="{}")["ARN"]
    try:
        # Passed by name: pydantic ignores a field FargateSettings does not have (yet).
        settings_fields: dict[str, Any] = {"container_secret_arn": secret_arn}
        yield FargateSettings(
            region=aws_env.region,
            cluster=name,
            subnets=aws_network.subnet_ids,
            security_groups=[aws_network.security_group_id],
            assign_public_ip=aws_network.public,
            execution_role_arn=aws_network.execution_role_arn,
            task_role_arn=aws_network.task_role_arn,
            log_group=log_group,
            **settings_fields,
        )
    finally:
        left = running_task_arns(ecs, name)
        for arn in left:
            ecs.stop_task(cluster=name, task=arn, reason="test clean-up")
        if aws_env.real and left:
            ecs.get_waiter("tasks_stopped").wait(cluster=name, tasks=left)
        _retry_cleanup(lambda: ecs.delete_cluster(cluster=name), f"cluster {name}")
        _retry_cleanup(lambda: logs.delete_log_group(logGroupName=log_group), f"log group {log_group}")
        _retry_cleanup(
            lambda: secrets.delete_secret(SecretId=secret_arn, ForceDeleteWithoutRecovery=True), f"secret {name}"
        )
        assert not left, f"the test left ECS tasks running: {left}"


@pytest.fixture(name="fake_fargate")
def fixture_fake_fargate(fargate_settings: FargateSettings, aws_env: AwsTarget) -> Iterator[Callable[..., FakeFargate]]:
    """``fake_fargate(resolve)`` starts a stand-in for Fargate's data plane on this test's cluster;
    ``resolve(image) -> LocalImage`` says where an image's tasks folder and Python are. At the end it
    kills every process it started and fails the test if one was still running."""
    if aws_env.real:
        pytest.skip("the fake data plane runs only against moto")
    started: list[FakeFargate] = []

    def start(resolve: Callable[[str], LocalImage], **kwargs: Any) -> FakeFargate:
        fake = FakeFargate(fargate_settings.cluster, resolve, region=fargate_settings.region, **kwargs)
        fake.start()
        started.append(fake)
        return fake

    yield start
    problems: list[str] = []
    for fake in started:
        # moto marks a task STOPPED as soon as StopTask is called; the fake kills its process when it next
        # polls moto, a moment later on a loaded machine.
        deadline = time.monotonic() + 30
        while (left := fake.running_tasks()) and time.monotonic() < deadline:
            time.sleep(0.1)
        fake.stop()
        if left:
            problems.append(f"tasks still running: {left}")
        if fake.errors:
            problems.append(f"fake data plane errors: {fake.errors}")
        if fake.alive_pids():
            problems.append(f"processes left after shutdown: {fake.alive_pids()}")
    assert not problems, "; ".join(problems)
