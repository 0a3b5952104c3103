"""One whole invocation on real AWS Fargate, on the Terraform module's own resources (MULTINODE_TEST_REAL_AWS=1).

NOT RUN where it was written (no AWS account, no Docker engine there): it is collected and skipped.

It applies deploy/terraform for real (``create_vpc = true``, a unique ``name_prefix``, state in a
temporary directory), puts the containers' secret (``mn container-secret``) into the module's secret,
runs ``mn worker`` with ``terraform output -json worker_environment`` and the module's worker policy
(through a temporary role that carries only that policy), registers a tasks folder with
``mn register --provisioner fargate`` (Docker builds and pushes the image to the module's ECR
repository, with the module's register policy), invokes a function with ``mn invoke``, and checks the
result, the logs (``mn logs`` and CloudWatch), the task (its task definition's roles and secret, no
credential in its RunTask overrides) and that no task is left running. Everything is destroyed at the
end, also after a failure (``terraform destroy`` is retried while Fargate releases network interfaces).

Needs: AWS credentials and a region in the environment (``AWS_PROFILE`` or keys; ``AWS_REGION``) allowed
to apply the module and to create an IAM role; ``terraform`` (with access to the provider registry);
a Docker engine that builds ``linux/amd64`` images; and a Temporal that both this machine and Fargate
tasks reach over the internet, e.g. Temporal Cloud: ``MULTINODE_TEST_TEMPORAL_PROFILE`` (a
``temporal.toml`` profile name) or ``TEMPORAL_ADDRESS`` with ``TEMPORAL_NAMESPACE`` and
``TEMPORAL_API_KEY`` (or ``TEMPORAL_TLS_*``). ``MULTINODE_TEST_TF_VARS`` (a JSON object) adds module
variables, e.g. ``{"create_ecs_service_linked_role": true}`` in an account that never ran ECS. About
10-20 minutes; costs cents (a NAT-free VPC, one 0.25-vCPU task for a minute, an image in ECR until
destroy).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError, WaiterError

from multinode._settings import MultinodeSettings
from tests.aws import REAL_AWS, AwsTarget, fixture_aws_target, running_task_arns  # noqa: F401 - fixture
from tests.helpers import assert_eventually, write_tasks

REPO = Path(__file__).resolve().parent.parent
TERRAFORM_MODULE = REPO / "deploy" / "terraform"
MN = Path(sys.executable).with_name("mn")
TEMPORAL_PROFILE_VAR = "MULTINODE_TEST_TEMPORAL_PROFILE"
TF_VARS_VAR = "MULTINODE_TEST_TF_VARS"
"""More variables of the module, as a JSON object (e.g. ``{"create_ecs_service_linked_role": true}``)."""
_TEMPORAL_ENV = {k: v for k, v in os.environ.items() if k.startswith("TEMPORAL_")}
"""The Temporal connection of the environment, read at import: conftest's fixtures replace TEMPORAL_* per test."""
TASKS = """
import os

from multinode import Multinode

mn = Multinode()

@mn.function(cpu=0.25, memory="512 MiB")
def square(x):
    print(f"squaring {x}", flush=True)
    return {
        "square": x * x,
        "on_fargate": "ECS_CONTAINER_METADATA_URI_V4" in os.environ,
        "secret_env": sorted(
            k for k in os.environ
            if k.startswith("TEMPORAL_") or k in ("MULTINODE_SECRETS", "MULTINODE_ENCRYPTION_KEYS")
        ),
    }
"""

pytestmark = [
    pytest.mark.skipif(
        not REAL_AWS,
        reason="runs on real AWS: set MULTINODE_TEST_REAL_AWS=1 (with AWS credentials, a region, terraform, "
        f"Docker and a Temporal that Fargate reaches: {TEMPORAL_PROFILE_VAR} or TEMPORAL_ADDRESS)",
    ),
    pytest.mark.timeout(3600),
]


def temporal_env() -> dict[str, str]:
    """The Temporal connection for every process of the test, or a skip saying what is missing."""
    env = dict(_TEMPORAL_ENV)
    if os.environ.get(TEMPORAL_PROFILE_VAR):
        env["TEMPORAL_PROFILE"] = os.environ[TEMPORAL_PROFILE_VAR]
    elif not env.get("TEMPORAL_ADDRESS"):
        pytest.skip(
            "needs a Temporal that Fargate tasks reach over the internet (e.g. Temporal Cloud): set "
            f"{TEMPORAL_PROFILE_VAR} to a temporal.toml profile, or TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE and "
            "TEMPORAL_API_KEY"
        )
    address = MultinodeSettings.from_env({**env, "HOME": os.environ.get("HOME", "")}).temporal_address
    host = address.rsplit(":", 1)[0].strip("[]")
    if host in ("localhost", "0.0.0.0", "::1") or host.startswith("127."):
        pytest.skip(
            f"Temporal at {address} is not reachable from Fargate tasks: use a public endpoint (Temporal Cloud)"
        )
    return env


def missing_tool() -> str | None:
    if shutil.which("terraform") is None:
        return "terraform is not installed (the test applies deploy/terraform for real)"
    docker = shutil.which("docker")
    if docker is None:
        return "the docker CLI is not installed (mn register builds the function image with Docker)"
    info = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if info.returncode != 0:
        return f"no Docker engine answers (`docker info`: {info.stderr.strip()[-300:]})"
    if not MN.exists():
        return f"the mn command is not installed next to {sys.executable}"
    return None


def run(args: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None, secret: bool = False) -> str:
    """The command's output; on failure the test fails with its output (not stdout when ``secret``)."""
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        stdout = "(stdout not shown: it may hold credentials)" if secret else done.stdout[-4000:]
        pytest.fail(f"{' '.join(args[:3])} failed ({done.returncode}):\n{stdout}\n{done.stderr[-4000:]}")
    return done.stdout


@dataclass
class Deployment:
    prefix: str
    region: str
    outputs: dict[str, Any]
    temporal: dict[str, str]
    home: Path

    def output(self, name: str) -> Any:
        return self.outputs[name]["value"]

    @property
    def worker_environment(self) -> dict[str, str]:
        """``worker_environment``, with the test's own task queue (the namespace may be shared)."""
        env = {k: str(v) for k, v in self.output("worker_environment").items() if k != "MULTINODE_TASK_QUEUE"}
        env.setdefault("MULTINODE_CONTAINER_SECRET_ARN", self.output("container_secret_arn"))
        return env

    @property
    def cluster(self) -> str:
        return self.worker_environment["MULTINODE_ECS_CLUSTER"]

    def env(self, **extra: str) -> dict[str, str]:
        """A subprocess environment: no AWS or Temporal variable of this process, the test's Temporal."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "MULTINODE_", "AWS_"))}
        env.update(self.temporal)
        env.update(
            MULTINODE_HOME=str(self.home),
            MULTINODE_TASK_QUEUE=f"{self.prefix}-test",
            MULTINODE_WORKER_WAIT_SECONDS="120",
            AWS_REGION=self.region,
            AWS_DEFAULT_REGION=self.region,
        )
        env.update(extra)
        return env


@pytest.fixture(scope="module")
def deployment(aws_target: AwsTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    """deploy/terraform applied for real in a temporary directory, destroyed at the end whatever happened."""
    reason = missing_tool()
    if reason:
        pytest.skip(reason)
    temporal = temporal_env()
    root = tmp_path_factory.mktemp("aws-real")
    workdir = root / "module"
    shutil.copytree(
        TERRAFORM_MODULE,
        workdir,
        ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", "*.tfvars", "*.tfplan", "*override.tf"),
    )
    prefix = f"mnt{uuid.uuid4().hex[:8]}"
    tf_vars = {"region": aws_target.region, "name_prefix": prefix, "create_vpc": True, "ecr_force_delete": True}
    tf_vars.update(json.loads(os.environ.get(TF_VARS_VAR) or "{}"))
    (workdir / "test.auto.tfvars.json").write_text(json.dumps(tf_vars, indent=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_VAR_", "TF_WORKSPACE", "TF_DATA_DIR"))}
    env.update(TF_IN_AUTOMATION="1", TF_INPUT="0", CHECKPOINT_DISABLE="1")
    terraform = [str(shutil.which("terraform"))]
    run([*terraform, "init", "-input=false", "-no-color"], env, timeout=900, cwd=workdir)
    cluster = prefix  # the module's cluster name, until its output says
    try:
        run([*terraform, "apply", "-auto-approve", "-input=false", "-no-color"], env, timeout=1800, cwd=workdir)
        outputs = json.loads(run([*terraform, "output", "-json"], env, timeout=120, cwd=workdir))
        (root / "home").mkdir()
        deployed = Deployment(
            prefix=prefix, region=aws_target.region, outputs=outputs, temporal=temporal, home=root / "home"
        )
        cluster = deployed.cluster
        yield deployed
    finally:
        _stop_tasks_and_task_definitions(aws_target, cluster, prefix)
        _destroy(terraform, env, workdir)


def _stop_tasks_and_task_definitions(aws: AwsTarget, cluster: str, prefix: str) -> None:
    """What the module does not own: tasks still running (their network interfaces block the VPC's
    deletion) and the task definitions the worker registered (families ``PREFIX-fn-*``)."""
    ecs = aws.client("ecs")
    try:
        left = running_task_arns(ecs, cluster)
        for arn in left:
            ecs.stop_task(cluster=cluster, task=arn, reason="test clean-up")
        if left:
            ecs.get_waiter("tasks_stopped").wait(cluster=cluster, tasks=left[:100])
        arns: dict[str, list[str]] = {"ACTIVE": [], "INACTIVE": []}
        for status, found in arns.items():
            for page in ecs.get_paginator("list_task_definitions").paginate(
                familyPrefix=f"{prefix}-fn-", status=status
            ):
                found.extend(page["taskDefinitionArns"])
        for arn in arns["ACTIVE"]:
            ecs.deregister_task_definition(taskDefinition=arn)
        every = arns["ACTIVE"] + arns["INACTIVE"]
        for start in range(0, len(every), 10):
            ecs.delete_task_definitions(taskDefinitions=every[start : start + 10])
    except (ClientError, WaiterError) as exc:
        warnings.warn(f"clean-up before terraform destroy: {exc}", stacklevel=2)


def _destroy(terraform: list[str], env: dict[str, str], workdir: Path) -> None:
    last = ""
    for _ in range(3):  # Fargate releases a stopped task's network interface minutes late
        done = subprocess.run(
            [*terraform, "destroy", "-auto-approve", "-input=false", "-no-color"],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if done.returncode == 0:
            return
        last = f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        time.sleep(60)
    pytest.fail(f"terraform destroy failed; destroy by hand: terraform -chdir={workdir} destroy\n{last}")


@contextmanager
def assumed_role(aws: AwsTarget, name: str, policy_arn: str) -> Iterator[dict[str, str]]:
    """Credentials of a temporary role that carries only ``policy_arn`` (assumable by this account)."""
    iam, sts = aws.client("iam"), aws.client("sts")
    caller = sts.get_caller_identity()
    partition = caller["Arn"].split(":")[1]
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"AWS": f"arn:{partition}:iam::{caller['Account']}:root"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role_arn = iam.create_role(RoleName=name, AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
    try:
        iam.attach_role_policy(RoleName=name, PolicyArn=policy_arn)

        def assume() -> dict[str, Any] | None:
            try:
                return dict(
                    sts.assume_role(RoleArn=role_arn, RoleSessionName=name, DurationSeconds=3600)["Credentials"]
                )
            except ClientError as exc:  # IAM is eventually consistent: a new role is not assumable at once
                if exc.response.get("Error", {}).get("Code") != "AccessDenied":
                    raise
                return None

        credentials = assert_eventually(assume, timeout=120, interval=5, message=f"assume {role_arn}")
        assert credentials is not None
        yield {
            "AWS_ACCESS_KEY_ID": credentials["AccessKeyId"],
            "AWS_SECRET_ACCESS_KEY": credentials["SecretAccessKey"],
            "AWS_SESSION_TOKEN": credentials["SessionToken"],
        }
    finally:
        try:
            iam.detach_role_policy(RoleName=name, PolicyArn=policy_arn)
        except ClientError:
            pass
        iam.delete_role(RoleName=name)


def client_with(credentials: dict[str, str], region: str, service: str) -> Any:
    return boto3.session.Session(
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        aws_session_token=credentials["AWS_SESSION_TOKEN"],
        region_name=region,
    ).client(service)


def wait_policy_effective(call: Callable[[], Any]) -> None:
    """Wait until ``call`` (an action the role's policy allows) is no longer denied: a new role's policy
    reaches each service a moment after the role is assumable."""

    def allowed() -> bool:
        try:
            call()
            return True
        except ClientError as exc:
            if "AccessDenied" in exc.response.get("Error", {}).get("Code", ""):
                return False
            raise

    assert_eventually(allowed, timeout=120, interval=5, message="the role's policy applies")


@pytest.fixture(scope="module")
def worker(deployment: Deployment, aws_target: AwsTarget) -> Iterator[Path]:
    """``mn worker`` with worker_environment and the module's worker policy; yields its log file."""
    with assumed_role(aws_target, f"{deployment.prefix}-test-worker", deployment.output("worker_policy_arn")) as creds:
        worker_ecs = client_with(creds, deployment.region, "ecs")
        wait_policy_effective(lambda: worker_ecs.list_tasks(cluster=deployment.cluster))
        log_path = deployment.home.parent / "worker.log"
        with log_path.open("w") as log:
            process = subprocess.Popen(
                [str(MN), "worker"],
                env=deployment.env(**deployment.worker_environment, **creds),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:

            def ready() -> bool:
                assert process.poll() is None, f"mn worker exited:\n{log_path.read_text()[-4000:]}"
                return "Control-plane worker ready" in log_path.read_text()

            assert_eventually(ready, timeout=120, interval=1, message="mn worker is ready")
            yield log_path
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=30)


def _credential_strings(temporal: dict[str, str]) -> list[str]:
    """The Temporal credentials of the test (none may travel in RunTask overrides)."""
    profile = MultinodeSettings.from_env({**temporal, "HOME": os.environ.get("HOME", "")}).temporal_profile
    found = [profile.get("api_key")]
    tls = profile.get("tls")
    key = tls.get("client_key") if isinstance(tls, dict) else None
    if isinstance(key, dict):
        key = key.get("data") or (Path(key["path"]).read_text() if key.get("path") else None)
    found.append(key)
    return [s for s in found if isinstance(s, str) and len(s) >= 8]


def test_an_invocation_runs_on_fargate_with_the_modules_resources(
    deployment: Deployment, worker: Path, aws_target: AwsTarget, tmp_path: Path
) -> None:
    secret_arn = deployment.worker_environment["MULTINODE_CONTAINER_SECRET_ARN"]
    container_secret = run([str(MN), "container-secret"], deployment.env(), timeout=60, secret=True)
    aws_target.client("secretsmanager").put_secret_value(SecretId=secret_arn, SecretString=container_secret.strip())

    project = f"{deployment.prefix}-project"
    tasks = write_tasks(tmp_path / "tasks", {"main.py": TASKS})
    with assumed_role(
        aws_target, f"{deployment.prefix}-test-register", deployment.output("register_policy_arn")
    ) as creds:
        register_ecr = client_with(creds, deployment.region, "ecr")
        wait_policy_effective(register_ecr.get_authorization_token)
        run(
            [str(MN), "register", str(tasks), "--project", project, "--provisioner", "fargate", "--json"],
            deployment.env(**deployment.worker_environment, **creds),
            timeout=1800,
        )
    try:
        invocation = json.loads(
            run([str(MN), "invoke", "square", "7", "--project", project, "--follow", "--json"], deployment.env(), 1200)
        )
        assert invocation["status"] == "SUCCEEDED", invocation
        assert invocation["result"] == {"square": 49, "on_fargate": True, "secret_env": []}
        invocation_id = invocation["invocation_id"]

        assert "squaring 7" in run([str(MN), "logs", invocation_id], deployment.env(), 300)
        logs = aws_target.client("logs")
        log_group = deployment.worker_environment["MULTINODE_LOG_GROUP"]
        assert_eventually(
            lambda: logs.filter_log_events(logGroupName=log_group, filterPattern='"squaring 7"')["events"],
            timeout=120,
            interval=5,
        )

        ecs = aws_target.client("ecs")
        cluster = deployment.cluster
        assert_eventually(lambda: running_task_arns(ecs, cluster) == [], timeout=600, interval=10)
        stopped = ecs.list_tasks(cluster=cluster, desiredStatus="STOPPED")["taskArns"]
        described = (
            ecs.describe_tasks(cluster=cluster, tasks=stopped[:100], include=["TAGS"])["tasks"] if stopped else []
        )
        ours = [
            t for t in described if {x["key"]: x["value"] for x in t.get("tags", [])}.get("invocation") == invocation_id
        ]
        assert ours, f"no stopped task tagged with invocation {invocation_id}"
        task = ours[0]
        overrides = json.dumps(task.get("overrides", {}))
        for credential in _credential_strings(deployment.temporal):
            assert credential not in overrides, "a Temporal credential is in the RunTask overrides"
        definition = ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
        (container,) = definition["containerDefinitions"]
        assert container["secrets"] == [{"name": "MULTINODE_SECRETS", "valueFrom": secret_arn}]
        assert "@sha256:" in container["image"]  # pinned by digest
        assert definition["executionRoleArn"] == deployment.worker_environment["MULTINODE_TASK_EXECUTION_ROLE_ARN"]
        assert definition["taskRoleArn"] == deployment.worker_environment["MULTINODE_TASK_ROLE_ARN"]
    finally:
        subprocess.run([str(MN), "delete", project, "--yes"], env=deployment.env(), capture_output=True, timeout=300)
