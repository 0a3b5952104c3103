"""The AWS deployment files: deploy/terraform, docker-compose.temporal.yml, deploy/Dockerfile.worker.

The Terraform module is applied for real against a moto server (AWS mocked on 127.0.0.1): terraform
init (offline, from a local provider mirror, with the committed lock file read-only), validate, apply,
read the outputs, check the resources through boto3, apply again with private subnets and VPC
endpoints, destroy. The compose file and the worker Dockerfile are checked statically, since no
Docker engine runs where these tests run; the compose file's namespace setup script also runs against
a Temporal dev server.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from multinode._protocol import SEARCH_ATTRIBUTES
from multinode._settings import MultinodeSettings
from multinode.control_plane.devserver import DYNAMIC_CONFIG, port_open, temporal_binary

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
TERRAFORM_MODULE = DEPLOY / "terraform"
COMPOSE_FILE = REPO / "docker-compose.temporal.yml"
WORKER_DOCKERFILE = DEPLOY / "Dockerfile.worker"
WORKER_DOCKERIGNORE = DEPLOY / "Dockerfile.worker.dockerignore"

WORKER_ENV_VARS = (
    "MULTINODE_PROVISIONER",
    "MULTINODE_AWS_REGION",
    "MULTINODE_ECS_CLUSTER",
    "MULTINODE_SUBNETS",
    "MULTINODE_SECURITY_GROUPS",
    "MULTINODE_ASSIGN_PUBLIC_IP",
    "MULTINODE_TASK_EXECUTION_ROLE_ARN",
    "MULTINODE_TASK_ROLE_ARN",
    "MULTINODE_LOG_GROUP",
    "MULTINODE_ECR_REPOSITORY",
    "MULTINODE_CONTAINER_SECRET_ARN",
    "MULTINODE_TASK_FAMILY_PREFIX",
    "MULTINODE_FARGATE_SPOT",
    "MULTINODE_TASK_QUEUE",
)
"""Every variable the Fargate provisioner's worker reads, all in the worker_environment output."""
OUTPUT_OF_VAR = {
    "MULTINODE_PROVISIONER": "provisioner",
    "MULTINODE_AWS_REGION": "aws_region",
    "MULTINODE_ECS_CLUSTER": "ecs_cluster",
    "MULTINODE_SUBNETS": "subnets",
    "MULTINODE_SECURITY_GROUPS": "security_groups",
    "MULTINODE_ASSIGN_PUBLIC_IP": "assign_public_ip",
    "MULTINODE_TASK_EXECUTION_ROLE_ARN": "task_execution_role_arn",
    "MULTINODE_TASK_ROLE_ARN": "task_role_arn",
    "MULTINODE_LOG_GROUP": "log_group",
    "MULTINODE_ECR_REPOSITORY": "ecr_repository",
    "MULTINODE_CONTAINER_SECRET_ARN": "container_secret_arn",
    "MULTINODE_TASK_FAMILY_PREFIX": "name_prefix",
    "MULTINODE_FARGATE_SPOT": "fargate_spot",
}
"""The single output that holds each variable too (the names the provisioner's errors point to)."""

# --- terraform against moto -------------------------------------------------------------------------

TERRAFORM = shutil.which("terraform")
PROVIDER_VERSION_CONSTRAINT = (5, 100)
"""deploy/terraform/versions.tf asks for hashicorp/aws ~> 5.100."""
MOTO_SERVICES = ("ecs", "iam", "logs", "ecr", "ec2", "sts", "secretsmanager")
REGION = "eu-west-1"
PREFIX = "mntest"
WORKER_IMAGE = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mntest/worker:test"
API_KEY_SECRET = "arn:aws:secretsmanager:eu-west-1:123456789012:secret:mntest/temporal-api-key-AbCdEf"
TASK_INLINE_POLICY = {
    "Version": "2012-10-17",
    "Statement": [{"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::mntest-data/*"}],
}
CONTAINER_SECRETS = {"MULTINODE_TEMPORAL_PROFILE": '{"address": "temporal.example.internal:7233"}'}
TF_VARS: dict[str, Any] = {
    "region": REGION,
    "name_prefix": PREFIX,
    "create_vpc": True,
    "az_count": 2,
    "log_retention_days": 14,
    "ecr_force_delete": True,
    "temporal_address": "temporal.example.internal:7233",
    "temporal_namespace": "multinode-test",
    "task_role_inline_policy": json.dumps(TASK_INLINE_POLICY),
    "worker_image": WORKER_IMAGE,
    # A JSON key after the ARN: the execution role must be granted the secret itself.
    "worker_secrets": {"TEMPORAL_API_KEY": API_KEY_SECRET + ":apikey::"},
    "fargate_spot": "retried",
    # moto implements CreateServiceLinkedRole, so the fresh-account path is the one applied here.
    "create_ecs_service_linked_role": True,
    "container_secrets": json.dumps(CONTAINER_SECRETS),
    "container_secret_recovery_days": 0,
    "ecr_untagged_expiry_days": 3,
    "ecr_keep_tagged_images": 200,
}
ECS_LINKED_ROLE_PATH = "/aws-service-role/ecs.amazonaws.com/"
IAM_PREFIX = f"{PREFIX}-{REGION}"
"""IAM names are account-wide, so they carry the region."""
WORKER_ACTIONS = sorted(
    [
        "ecs:RegisterTaskDefinition",
        "ecs:DescribeTaskDefinition",
        "ecs:RunTask",
        "ecs:DescribeTasks",
        "ecs:ListTasks",
        "ecs:StopTask",
        "ecs:TagResource",
        "iam:PassRole",
        "logs:GetLogEvents",
    ]
)
"""Every AWS call the control-plane worker makes, and nothing more (no ECR, no deregistration)."""
PRIVATE_ENDPOINTS = {"ecr.api", "ecr.dkr", "logs", "secretsmanager", "ecs", "s3"}
"""VPC endpoints of private subnets without a NAT gateway (ecs: the worker service runs there too)."""
TIMINGS: dict[str, float] = {}
"""Seconds per terraform step, printed at the end of the module (pytest -s shows them)."""


def _provider_mirror() -> tuple[Path | None, str]:
    """A filesystem mirror holding hashicorp/aws ~> 5.100 for this platform, or None and why not."""
    candidates = [os.environ.get("MULTINODE_TF_PROVIDER_MIRROR", ""), "/opt/tf-plugins"]
    candidates += [str(Path.home() / ".terraform.d" / "plugins"), "/usr/local/share/terraform/plugins"]
    candidates += ["/usr/share/terraform/plugins"]
    seen: list[str] = []
    for candidate in filter(None, candidates):
        base = Path(candidate) / "registry.terraform.io" / "hashicorp" / "aws"
        for binary in sorted(base.glob("*/linux_amd64/terraform-provider-aws*")):
            version = binary.parent.parent.name
            seen.append(f"{version} in {candidate}")
            major_minor = tuple(int(part) for part in version.split(".")[:2] if part.isdigit())
            if (
                len(major_minor) == 2
                and major_minor[0] == PROVIDER_VERSION_CONSTRAINT[0]
                and major_minor >= PROVIDER_VERSION_CONSTRAINT
            ):
                return Path(candidate), ""
    found = f" (found: {', '.join(seen)})" if seen else ""
    return None, f"no filesystem mirror of hashicorp/aws ~> 5.100 for linux_amd64{found}"


MIRROR, NO_MIRROR_REASON = _provider_mirror()
needs_terraform = pytest.mark.skipif(
    TERRAFORM is None or MIRROR is None,
    reason="the terraform binary is not installed" if TERRAFORM is None else NO_MIRROR_REASON,
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    # Port 0: the server binds a free port itself; start() returns once it listens. (A port picked
    # beforehand may be taken before the bind, and then start() waits forever for a server that failed.)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{server.get_host_and_port()[1]}"
    finally:
        server.stop()


class Terraform:
    """The terraform CLI in a temporary copy of deploy/terraform whose provider talks to moto."""

    def __init__(self, workdir: Path, env: dict[str, str]) -> None:
        self.workdir = workdir
        self.env = env

    def run(self, *args: str, check: bool = True, timing: str | None = None) -> subprocess.CompletedProcess[str]:
        started = time.monotonic()
        done = subprocess.run(
            [str(TERRAFORM), *args, "-no-color"],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        if timing:
            TIMINGS[timing] = round(time.monotonic() - started, 1)
        if check and done.returncode != 0:
            pytest.fail(f"terraform {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr}")
        return done


@pytest.fixture(scope="module")
def terraform(moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Terraform]:
    if TERRAFORM is None or MIRROR is None:
        pytest.skip("the terraform binary is not installed" if TERRAFORM is None else NO_MIRROR_REASON)
    root = tmp_path_factory.mktemp("terraform")
    workdir = root / "module"
    shutil.copytree(
        TERRAFORM_MODULE, workdir, ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", "*.tfvars", "*.tfplan")
    )
    endpoints = "\n".join(f'    {name} = "{moto_endpoint}"' for name in MOTO_SERVICES)
    # Test-only provider settings, merged into the module's provider block (Terraform override file).
    (workdir / "provider_override.tf").write_text(
        f"""provider "aws" {{
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true
  endpoints {{
{endpoints}
  }}
}}
"""
    )
    (workdir / "moto.tfvars.json").write_text(json.dumps(TF_VARS, indent=2))
    cli_config = root / "terraform.rc"
    cli_config.write_text(
        f"""provider_installation {{
  filesystem_mirror {{
    path    = "{MIRROR}"
    include = ["registry.terraform.io/hashicorp/aws"]
  }}
}}
"""
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "AWS_"))}
    env.update(
        TF_CLI_CONFIG_FILE=str(cli_config),
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
        CHECKPOINT_DISABLE="1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    tf = Terraform(workdir, env)
    # readonly: init fails if the mirror's provider matches none of the committed lock file's hashes.
    tf.run("init", "-input=false", "-lockfile=readonly", timing="init")
    tf.run("validate", timing="validate")
    yield tf
    if TIMINGS:
        print("\nterraform timings (s):", json.dumps(TIMINGS), file=sys.stderr)


def _client(service: str, endpoint: str) -> Any:
    return boto3.client(
        service, endpoint_url=endpoint, region_name=REGION, aws_access_key_id="test", aws_secret_access_key="test"
    )


def _statements(document: Any) -> dict[str, dict[str, Any]]:
    """A policy document's statements by Sid, with Action and Resource always lists."""
    if isinstance(document, str):
        document = json.loads(document)
    statements = {}
    for statement in document["Statement"]:
        for key in ("Action", "Resource"):
            value = statement.get(key, [])
            statement[key] = sorted([value] if isinstance(value, str) else value)
        statements[statement["Sid"]] = statement
    return statements


@needs_terraform
def test_terraform_module_is_formatted() -> None:
    done = subprocess.run(
        [str(TERRAFORM), "fmt", "-check", "-recursive", "-diff", "-no-color", str(TERRAFORM_MODULE)],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CLI_CONFIG_FILE": os.devnull, "CHECKPOINT_DISABLE": "1"},
        timeout=60,
    )
    assert done.returncode == 0, f"terraform fmt would change:\n{done.stdout}{done.stderr}"


@needs_terraform
def test_terraform_lock_file_is_committed_and_matches_the_mirror(terraform: Terraform) -> None:
    """The lock file pins the mirror's provider; `init -lockfile=readonly` (the fixture) accepted it."""
    committed = (TERRAFORM_MODULE / ".terraform.lock.hcl").read_text()
    assert (terraform.workdir / ".terraform.lock.hcl").read_text() == committed  # copied, and init left it alone
    (block,) = re.findall(r'provider "registry\.terraform\.io/hashicorp/aws" \{(.*?)\n\}', committed, re.S)
    version = re.search(r'version\s+=\s+"([^"]+)"', block)
    assert version and (MIRROR / "registry.terraform.io/hashicorp/aws" / version.group(1) / "linux_amd64").is_dir()
    versions_tf = (TERRAFORM_MODULE / "versions.tf").read_text()
    required = re.search(r'source\s*=\s*"hashicorp/aws"[^}]*?\bversion\s*=\s*"([^"]+)"', versions_tf, re.S)
    assert required and f'constraints = "{required.group(1)}"' in block
    hashes = re.findall(r'"((?:h1|zh):[^"]+)"', block)
    # h1: the unpacked linux_amd64 package (what the mirror holds); zh: the release's zip of each platform,
    # so `terraform init` from the registry on macOS or Windows accepts the same lock file.
    assert any(h.startswith("h1:") for h in hashes) and sum(h.startswith("zh:") for h in hashes) >= 10, hashes
    assert hashes == sorted(hashes) and len(set(hashes)) == len(hashes)
    assert ".terraform.lock.hcl" not in (TERRAFORM_MODULE / ".gitignore").read_text()


@needs_terraform
@pytest.mark.timeout(300)
def test_terraform_rejects_incomplete_settings(terraform: Terraform) -> None:
    """Without create_vpc, vpc_id and subnet_ids are required; a NAT gateway needs private subnets of the
    module's VPC; fargate_spot takes three values. One plan reports all of them, each saying what to do."""
    bad = ("-var", "create_vpc=false", "-var", "nat_gateway=true", "-var", "fargate_spot=sometimes")
    done = terraform.run("plan", "-input=false", *bad, check=False, timing="plan-rejected")
    assert done.returncode != 0
    stderr = " ".join(done.stderr.split())  # messages are wrapped
    assert "Set vpc_id and subnet_ids" in stderr, stderr
    assert "nat_gateway = true needs private_subnets = true" in stderr, stderr
    assert "private_subnets and nat_gateway shape the VPC that create_vpc = true creates" in stderr, stderr
    assert "fargate_spot must be off, retried or all" in stderr, stderr


@needs_terraform
@pytest.mark.timeout(600)  # apply and destroy: ~1 min on a quiet machine, ~2 min on a loaded one
def test_terraform_apply_against_moto(terraform: Terraform, moto_endpoint: str) -> None:
    var_file = "-var-file=moto.tfvars.json"
    terraform.run("apply", "-auto-approve", "-input=false", var_file, timing="apply")
    try:
        outputs = _outputs(terraform)
        _check_outputs(outputs)
        _check_resources(outputs, moto_endpoint)
        # In a fresh account the cluster must wait for the service-linked role: the state records the order.
        state = json.loads((terraform.workdir / "terraform.tfstate").read_text())
        (cluster,) = [r for r in state["resources"] if r["type"] == "aws_ecs_cluster"]
        assert "aws_iam_service_linked_role.ecs" in cluster["instances"][0]["dependencies"]
        # The same deployment moved to private subnets: no public IPs, AWS through VPC endpoints.
        private = ("-var", "private_subnets=true")
        terraform.run(
            "apply", "-auto-approve", "-input=false", "-refresh=false", var_file, *private, timing="apply-private"
        )
        _check_private_network(_outputs(terraform), outputs, moto_endpoint)
    finally:
        # As the tear-down docs advise: the account's ECS service-linked role stays (other ECS users share it).
        terraform.run("state", "rm", "aws_iam_service_linked_role.ecs[0]", check=False)
        terraform.run("destroy", "-auto-approve", "-input=false", "-refresh=false", var_file, timing="destroy")
    _check_destroyed(outputs, moto_endpoint)


def _outputs(terraform: Terraform) -> dict[str, Any]:
    return {k: v["value"] for k, v in json.loads(terraform.run("output", "-json").stdout).items()}


def _check_outputs(outputs: dict[str, Any]) -> None:
    env = outputs["worker_environment"]
    assert set(WORKER_ENV_VARS) <= set(env), sorted(set(WORKER_ENV_VARS) - set(env))
    assert all(isinstance(value, str) and value for value in env.values()), env
    for name, output in OUTPUT_OF_VAR.items():
        assert outputs[output] == env[name], (name, output)

    assert env["MULTINODE_PROVISIONER"] == "fargate"
    assert env["MULTINODE_AWS_REGION"] == REGION
    assert env["MULTINODE_ECS_CLUSTER"] == PREFIX
    subnets = env["MULTINODE_SUBNETS"].split(",")
    assert len(subnets) == TF_VARS["az_count"] and all(s.startswith("subnet-") for s in subnets), subnets
    groups = env["MULTINODE_SECURITY_GROUPS"].split(",")
    assert len(groups) == 1 and groups[0].startswith("sg-"), groups
    assert env["MULTINODE_ASSIGN_PUBLIC_IP"] == "true"  # the module's VPC has public subnets, no NAT
    assert re.fullmatch(
        rf"arn:aws:iam::\d{{12}}:role/{IAM_PREFIX}-task-execution", env["MULTINODE_TASK_EXECUTION_ROLE_ARN"]
    )
    assert re.fullmatch(rf"arn:aws:iam::\d{{12}}:role/{IAM_PREFIX}-function-task", env["MULTINODE_TASK_ROLE_ARN"])
    assert env["MULTINODE_LOG_GROUP"] == f"/{PREFIX}/functions"
    assert re.fullmatch(
        rf"\d{{12}}\.dkr\.ecr\.{REGION}\.amazonaws\.com/{PREFIX}/functions", env["MULTINODE_ECR_REPOSITORY"]
    ), env["MULTINODE_ECR_REPOSITORY"]
    assert env["MULTINODE_TASK_QUEUE"] == "multinode"
    assert re.fullmatch(
        rf"arn:aws:secretsmanager:{REGION}:\d{{12}}:secret:{PREFIX}/container-secrets-\w{{6}}",
        env["MULTINODE_CONTAINER_SECRET_ARN"],
    ), env["MULTINODE_CONTAINER_SECRET_ARN"]
    assert env["MULTINODE_TASK_FAMILY_PREFIX"] == PREFIX
    assert env["MULTINODE_FARGATE_SPOT"] == TF_VARS["fargate_spot"]
    assert env["TEMPORAL_ADDRESS"] == TF_VARS["temporal_address"]
    assert env["TEMPORAL_NAMESPACE"] == TF_VARS["temporal_namespace"]

    # The worker's settings take the map as it is.
    settings = MultinodeSettings.from_env({**env, "TEMPORAL_CONFIG_FILE": os.devnull})
    assert settings.provisioner == "fargate"
    assert settings.temporal_address == TF_VARS["temporal_address"]
    assert settings.temporal_namespace == TF_VARS["temporal_namespace"]
    assert settings.task_queue == "multinode"
    try:
        from multinode.provisioner.fargate_settings import FargateSettings
    except ImportError:  # the Fargate provisioner is not in this tree
        return
    fargate = FargateSettings.from_env(env)
    assert fargate.region == REGION and fargate.cluster == PREFIX and fargate.subnets == subnets
    assert fargate.security_groups == groups and fargate.assign_public_ip is True
    assert fargate.execution_role_arn == env["MULTINODE_TASK_EXECUTION_ROLE_ARN"]
    assert fargate.task_role_arn == env["MULTINODE_TASK_ROLE_ARN"]
    assert fargate.log_group == env["MULTINODE_LOG_GROUP"]
    assert fargate.ecr_repository == env["MULTINODE_ECR_REPOSITORY"]
    assert fargate.container_secret_arn == env["MULTINODE_CONTAINER_SECRET_ARN"]
    assert fargate.task_family_prefix == PREFIX and fargate.spot == TF_VARS["fargate_spot"]


def _check_resources(outputs: dict[str, Any], endpoint: str) -> None:
    env = outputs["worker_environment"]
    ecs, iam, logs = _client("ecs", endpoint), _client("iam", endpoint), _client("logs", endpoint)
    ecr, ec2, secrets = _client("ecr", endpoint), _client("ec2", endpoint), _client("secretsmanager", endpoint)

    # The account's ECS service-linked role (create_ecs_service_linked_role), made before the cluster.
    # (AWS names it AWSServiceRoleForECS; moto derives another name, so it is found by its path.)
    (linked,) = iam.list_roles(PathPrefix=ECS_LINKED_ROLE_PATH)["Roles"]
    assert linked["AssumeRolePolicyDocument"]["Statement"][0]["Principal"] == {"Service": ["ecs.amazonaws.com"]}

    # Cluster with the Fargate capacity providers.
    (cluster,) = ecs.describe_clusters(clusters=[env["MULTINODE_ECS_CLUSTER"]])["clusters"]
    assert cluster["status"] == "ACTIVE"
    assert cluster["clusterArn"] == outputs["ecs_cluster_arn"]
    assert set(cluster["capacityProviders"]) == {"FARGATE", "FARGATE_SPOT"}
    assert cluster["defaultCapacityProviderStrategy"][0]["capacityProvider"] == "FARGATE"

    # Log group with its retention; ECR repositories.
    groups = logs.describe_log_groups(logGroupNamePrefix=f"/{PREFIX}/")["logGroups"]
    retention = {g["logGroupName"]: g.get("retentionInDays") for g in groups}
    assert retention == {f"/{PREFIX}/functions": 14, f"/{PREFIX}/worker": 14}
    repositories = ecr.describe_repositories(repositoryNames=[f"{PREFIX}/functions", f"{PREFIX}/worker"])
    uris = {r["repositoryName"]: r["repositoryUri"] for r in repositories["repositories"]}
    assert uris[f"{PREFIX}/functions"] == env["MULTINODE_ECR_REPOSITORY"]
    assert uris[f"{PREFIX}/worker"] == outputs["worker_ecr_repository"]
    # Lifecycle: untagged images expire after ecr_untagged_expiry_days; with ecr_keep_tagged_images, the
    # functions repository keeps that many tagged images (rule priority after the untagged one).
    for name, rule_count in ((f"{PREFIX}/functions", 2), (f"{PREFIX}/worker", 1)):
        rules = json.loads(ecr.get_lifecycle_policy(repositoryName=name)["lifecyclePolicyText"])["rules"]
        assert len(rules) == rule_count, rules
        assert rules[0]["selection"] == {
            "tagStatus": "untagged",
            "countType": "sinceImagePushed",
            "countUnit": "days",
            "countNumber": TF_VARS["ecr_untagged_expiry_days"],
        }
        assert all(rule["action"] == {"type": "expire"} for rule in rules)
    rules = json.loads(ecr.get_lifecycle_policy(repositoryName=f"{PREFIX}/functions")["lifecyclePolicyText"])["rules"]
    assert rules[1]["rulePriority"] > rules[0]["rulePriority"]
    assert rules[1]["selection"] == {
        "tagStatus": "any",
        "countType": "imageCountMoreThan",
        "countNumber": TF_VARS["ecr_keep_tagged_images"],
    }

    # The container secret, with the value container_secrets gave it.
    secret_arn = env["MULTINODE_CONTAINER_SECRET_ARN"]
    assert json.loads(secrets.get_secret_value(SecretId=secret_arn)["SecretString"]) == CONTAINER_SECRETS
    assert secrets.describe_secret(SecretId=secret_arn)["Name"] == f"{PREFIX}/container-secrets"

    # Network: subnets of the created VPC; a security group with all egress and no ingress.
    subnets = ec2.describe_subnets(SubnetIds=env["MULTINODE_SUBNETS"].split(","))["Subnets"]
    assert {s["VpcId"] for s in subnets} == {outputs["vpc_id"]}
    assert len({s["AvailabilityZone"] for s in subnets}) == TF_VARS["az_count"]
    (group,) = ec2.describe_security_groups(GroupIds=[env["MULTINODE_SECURITY_GROUPS"]])["SecurityGroups"]
    assert group["VpcId"] == outputs["vpc_id"]
    assert group["IpPermissions"] == []
    assert [(p["IpProtocol"], [r["CidrIp"] for r in p["IpRanges"]]) for p in group["IpPermissionsEgress"]] == [
        ("-1", ["0.0.0.0/0"])
    ]

    # Roles assumable by ECS tasks only. The execution role may pull from the functions repository and
    # write to the functions log group, nothing more; the task role has only the inline policy we gave.
    role_arns = {
        "execution": env["MULTINODE_TASK_EXECUTION_ROLE_ARN"],
        "task": env["MULTINODE_TASK_ROLE_ARN"],
        "worker": outputs["worker_role_arn"],
    }
    for arn in role_arns.values():
        role = iam.get_role(RoleName=arn.rsplit("/", 1)[1])["Role"]
        assert role["Arn"] == arn
        (trust,) = role["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "ecs-tasks.amazonaws.com"}
    execution = f"{IAM_PREFIX}-task-execution"
    (name,) = iam.list_role_policies(RoleName=execution)["PolicyNames"]
    statements = _statements(iam.get_role_policy(RoleName=execution, PolicyName=name)["PolicyDocument"])
    repository_arn = f"arn:aws:ecr:{REGION}:123456789012:repository/{PREFIX}/functions"
    log_group_arn = f"arn:aws:logs:{REGION}:123456789012:log-group:/{PREFIX}/functions"
    assert statements["EcrAuth"]["Action"] == ["ecr:GetAuthorizationToken"]
    assert statements["EcrPullFunctionImages"]["Resource"] == [repository_arn]
    assert statements["WriteFunctionLogs"]["Action"] == ["logs:CreateLogStream", "logs:PutLogEvents"]
    assert statements["WriteFunctionLogs"]["Resource"] == [f"{log_group_arn}:log-stream:*"]
    # ECS reads the container secret (MULTINODE_SECRETS) with the execution role: that one ARN only.
    assert statements["ReadContainerSecret"]["Action"] == ["secretsmanager:GetSecretValue"]
    assert statements["ReadContainerSecret"]["Resource"] == [secret_arn]
    assert set(statements) == {"EcrAuth", "EcrPullFunctionImages", "WriteFunctionLogs", "ReadContainerSecret"}
    assert iam.list_attached_role_policies(RoleName=execution)["AttachedPolicies"] == []
    task = f"{IAM_PREFIX}-function-task"
    assert iam.list_attached_role_policies(RoleName=task)["AttachedPolicies"] == []
    assert iam.get_role_policy(RoleName=task, PolicyName="user-code")["PolicyDocument"] == TASK_INLINE_POLICY

    # The worker's policy: exactly the calls the worker makes. RunTask only Multinode's task-definition
    # families, in this cluster; stop/watch only this cluster's tasks; tags only as RunTask or
    # RegisterTaskDefinition create the resource; pass exactly the two function roles; read the logs.
    policy = iam.get_policy(PolicyArn=outputs["worker_policy_arn"])["Policy"]
    assert policy["PolicyName"] == f"{IAM_PREFIX}-worker"
    document = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])
    statements = _statements(document["PolicyVersion"]["Document"])
    assert statements == _statements(outputs["worker_policy_json"])
    assert sorted(a for s in statements.values() for a in s["Action"]) == WORKER_ACTIONS
    assert all(s["Effect"] == "Allow" for s in statements.values())
    cluster_condition = {"ArnEquals": {"ecs:cluster": outputs["ecs_cluster_arn"]}}
    families = f"arn:aws:ecs:{REGION}:123456789012:task-definition/{PREFIX}-fn-*"
    run = statements["RunFunctionTasksInTheCluster"]
    assert run["Action"] == ["ecs:RunTask"] and run["Resource"] == [families]
    assert run["Condition"] == cluster_condition
    watch = statements["WatchAndStopTasksInTheCluster"]
    assert watch["Action"] == ["ecs:DescribeTasks", "ecs:ListTasks", "ecs:StopTask"]
    assert watch["Condition"] == cluster_condition
    register = statements["RegisterTaskDefinitions"]  # no resource-level permissions in AWS
    assert register["Action"] == ["ecs:DescribeTaskDefinition", "ecs:RegisterTaskDefinition"]
    assert register["Resource"] == ["*"] and "Condition" not in register
    tag = statements["TagOnCreate"]
    assert tag["Action"] == ["ecs:TagResource"]
    assert tag["Resource"] == sorted([f"arn:aws:ecs:{REGION}:123456789012:task/{PREFIX}/*", families])
    assert tag["Condition"] == {"StringEquals": {"ecs:CreateAction": ["RunTask", "RegisterTaskDefinition"]}}
    passrole = statements["PassFunctionRoles"]
    assert passrole["Action"] == ["iam:PassRole"]
    assert passrole["Resource"] == sorted([role_arns["execution"], role_arns["task"]])
    assert passrole["Condition"] == {"StringEquals": {"iam:PassedToService": "ecs-tasks.amazonaws.com"}}
    assert statements["ReadFunctionLogs"]["Resource"] == [f"{log_group_arn}:log-stream:*"]
    attached = iam.list_attached_role_policies(RoleName=f"{IAM_PREFIX}-worker")["AttachedPolicies"]
    assert [p["PolicyArn"] for p in attached] == [outputs["worker_policy_arn"]]

    # Registration: check and push function images; nothing else.
    policy = iam.get_policy(PolicyArn=outputs["register_policy_arn"])["Policy"]
    assert policy["PolicyName"] == f"{IAM_PREFIX}-register"
    document = iam.get_policy_version(PolicyArn=policy["Arn"], VersionId=policy["DefaultVersionId"])
    statements = _statements(document["PolicyVersion"]["Document"])
    assert statements["EcrAuth"]["Action"] == ["ecr:GetAuthorizationToken"]
    push = statements["CheckAndPushFunctionImages"]
    assert push["Resource"] == [repository_arn]
    assert push["Action"] == sorted(
        ["ecr:DescribeImages", "ecr:BatchGetImage", "ecr:BatchCheckLayerAvailability", "ecr:InitiateLayerUpload"]
        + ["ecr:UploadLayerPart", "ecr:CompleteLayerUpload", "ecr:PutImage"]
    )

    # The optional worker service: `mn worker` with worker_environment and the API key as a secret.
    (service,) = ecs.describe_services(cluster=PREFIX, services=[outputs["worker_service"]])["services"]
    assert service["desiredCount"] == 1 and service["launchType"] == "FARGATE"
    network = service["networkConfiguration"]["awsvpcConfiguration"]
    assert sorted(network["subnets"]) == sorted(env["MULTINODE_SUBNETS"].split(","))
    assert network["securityGroups"] == [env["MULTINODE_SECURITY_GROUPS"]]
    assert network["assignPublicIp"] == "ENABLED"
    definition = ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
    assert definition["requiresCompatibilities"] == ["FARGATE"] and definition["networkMode"] == "awsvpc"
    assert definition["taskRoleArn"] == role_arns["worker"]
    (container,) = definition["containerDefinitions"]
    assert container["image"] == WORKER_IMAGE and container["command"] == ["mn", "worker"]
    container_env = {e["name"]: e["value"] for e in container["environment"]}
    assert {k: container_env.get(k) for k in env} == env
    # `mn worker` serves /healthz; ECS asks it through the health module and replaces a worker that fails.
    assert container_env["MULTINODE_WORKER_HEALTH_PORT"] == "8079"
    assert container["healthCheck"]["command"] == ["CMD", "python", "-m", "multinode.control_plane.health"]
    assert container["healthCheck"]["startPeriod"] >= 30
    assert container["secrets"] == [
        {"name": "TEMPORAL_API_KEY", "valueFrom": TF_VARS["worker_secrets"]["TEMPORAL_API_KEY"]}
    ]
    assert container["logConfiguration"]["options"]["awslogs-group"] == outputs["worker_log_group"]
    worker_execution = f"{IAM_PREFIX}-worker-execution"
    assert definition["executionRoleArn"].endswith(f":role/{worker_execution}")
    (name,) = iam.list_role_policies(RoleName=worker_execution)["PolicyNames"]
    statements = _statements(iam.get_role_policy(RoleName=worker_execution, PolicyName=name)["PolicyDocument"])
    assert statements["ReadWorkerSecrets"]["Resource"] == [API_KEY_SECRET]


def _check_private_network(outputs: dict[str, Any], public: dict[str, Any], endpoint: str) -> None:
    """private_subnets = true without a NAT gateway: tasks in private subnets, no public IP, and VPC
    endpoints for ECR (API and registry), CloudWatch Logs, Secrets Manager, ECS, plus the S3 gateway."""
    env, ec2, ecs = outputs["worker_environment"], _client("ec2", endpoint), _client("ecs", endpoint)
    assert env["MULTINODE_ASSIGN_PUBLIC_IP"] == "false" and outputs["assign_public_ip"] == "false"
    subnet_ids = env["MULTINODE_SUBNETS"].split(",")
    assert len(subnet_ids) == TF_VARS["az_count"]
    assert not set(subnet_ids) & set(public["subnets"].split(","))
    subnets = ec2.describe_subnets(SubnetIds=subnet_ids)["Subnets"]
    assert {s["VpcId"] for s in subnets} == {public["vpc_id"]}
    assert not any(s["MapPublicIpOnLaunch"] for s in subnets)
    tables = ec2.describe_route_tables(Filters=[{"Name": "association.subnet-id", "Values": subnet_ids}])
    (table,) = tables["RouteTables"]
    routes = table["Routes"]
    assert not [r for r in routes if r.get("GatewayId", "").startswith("igw-") or r.get("NatGatewayId")], routes
    assert outputs.get("nat_public_ip") is None  # terraform output leaves null outputs out

    found = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [public["vpc_id"]]}])["VpcEndpoints"]
    by_service = {e["ServiceName"].removeprefix(f"com.amazonaws.{REGION}."): e for e in found}
    assert set(by_service) == PRIVATE_ENDPOINTS
    assert outputs["vpc_endpoint_ids"] == {name: e["VpcEndpointId"] for name, e in by_service.items()}
    assert by_service["s3"]["VpcEndpointType"] == "Gateway"
    assert by_service["s3"]["RouteTableIds"] == [table["RouteTableId"]]
    for name in PRIVATE_ENDPOINTS - {"s3"}:
        interface = by_service[name]
        assert interface["VpcEndpointType"] == "Interface" and interface["PrivateDnsEnabled"], interface
        assert sorted(interface["SubnetIds"]) == sorted(subnet_ids)
    group_ids = {g["GroupId"] for e in by_service.values() for g in e.get("Groups", [])}
    (group,) = ec2.describe_security_groups(GroupIds=sorted(group_ids))["SecurityGroups"]
    assert [(p["IpProtocol"], p["FromPort"], p["ToPort"]) for p in group["IpPermissions"]] == [("tcp", 443, 443)]

    # The worker service moved along, without a public IP either.
    (service,) = ecs.describe_services(cluster=PREFIX, services=[outputs["worker_service"]])["services"]
    network = service["networkConfiguration"]["awsvpcConfiguration"]
    assert sorted(network["subnets"]) == sorted(subnet_ids) and network["assignPublicIp"] == "DISABLED"


def _check_destroyed(outputs: dict[str, Any], endpoint: str) -> None:
    ecs, iam, logs, ecr = (_client(s, endpoint) for s in ("ecs", "iam", "logs", "ecr"))
    clusters = ecs.describe_clusters(clusters=[PREFIX])["clusters"]
    assert all(c["status"] == "INACTIVE" for c in clusters), clusters
    assert logs.describe_log_groups(logGroupNamePrefix=f"/{PREFIX}/")["logGroups"] == []
    assert ecr.describe_repositories()["repositories"] == []
    assert [r["RoleName"] for r in iam.list_roles()["Roles"] if r["RoleName"].startswith(PREFIX)] == []
    assert len(iam.list_roles(PathPrefix=ECS_LINKED_ROLE_PATH)["Roles"]) == 1  # removed from the state, kept
    assert _client("secretsmanager", endpoint).list_secrets()["SecretList"] == []
    ec2 = _client("ec2", endpoint)
    assert ec2.describe_vpcs(Filters=[{"Name": "vpc-id", "Values": [outputs["vpc_id"]]}])["Vpcs"] == []
    endpoints = ec2.describe_vpc_endpoints(Filters=[{"Name": "vpc-id", "Values": [outputs["vpc_id"]]}])
    assert [e for e in endpoints["VpcEndpoints"] if e["State"] != "deleted"] == []


# --- docker-compose.temporal.yml --------------------------------------------------------------------


def _interpolate(value: Any, environ: dict[str, str] | None = None) -> Any:
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default} with an empty environment by default."""
    if not isinstance(value, str):
        return value
    env = environ or {}

    def substitute(match: re.Match[str]) -> str:
        name, op, default = match.group(1), match.group(2), match.group(3) or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|-)([^}]*))?\}", substitute, value)


def _environment(service: dict[str, Any]) -> dict[str, Any]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, None) for item in raw)
    return {k: _interpolate(v) for k, v in raw.items()}


def _bind_mounts(service: dict[str, Any]) -> dict[str, Path]:
    """Container path -> host path of the service's bind mounts of repository files."""
    mounts = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, str) and volume.startswith("./"):
            host, container = volume.split(":")[:2]
            mounts[container] = REPO / host
    return mounts


def _ports(service: dict[str, Any]) -> list[str]:
    return [_interpolate(str(p)) for p in service.get("ports") or []]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def _service(compose: dict[str, Any], image_prefixes: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    found = [
        (name, s)
        for name, s in compose["services"].items()
        if _interpolate(s.get("image", "")).startswith(image_prefixes)
    ]
    assert found, f"no service with an image starting with {image_prefixes}"
    return found[0]


def test_compose_postgres_temporal_and_web_ui(compose: dict[str, Any]) -> None:
    services = compose["services"]
    postgres_name, postgres = _service(compose, ("postgres:",))
    assert "healthcheck" in postgres

    temporal_name, temporal = _service(compose, ("temporalio/server:", "temporalio/auto-setup:"))
    env = _environment(temporal)
    assert env["DB"] == "postgres12" and env["POSTGRES_SEEDS"] == postgres_name
    assert "7233:7233" in _ports(temporal)
    if _interpolate(temporal["image"]).startswith("temporalio/server:"):
        # The plain server image needs its schema first: a one-shot service, completed before it starts.
        (schema_name,) = [
            n for n, c in temporal["depends_on"].items() if c["condition"] == "service_completed_successfully"
        ]
        schema = services[schema_name]
        assert _interpolate(schema["image"]).startswith("temporalio/admin-tools:")
        assert schema["depends_on"][postgres_name]["condition"] == "service_healthy"
        script = _bind_mounts(schema)[schema["command"][0]]
        assert "temporal-sql-tool --plugin postgres12" in script.read_text()

    _, ui = _service(compose, ("temporalio/ui:",))
    assert _environment(ui)["TEMPORAL_ADDRESS"] == f"{temporal_name}:7233"
    assert {"8080:8080", "8233:8080", "8233:8233"} & set(_ports(ui))


def test_compose_dynamic_config_is_multinodes(compose: dict[str, Any]) -> None:
    _, temporal = _service(compose, ("temporalio/server:", "temporalio/auto-setup:"))
    relative = _environment(temporal)["DYNAMIC_CONFIG_FILE_PATH"]  # relative to /etc/temporal
    container_path = "/etc/temporal/" + relative
    mounts = _bind_mounts(temporal)
    (mount,) = [c for c in mounts if container_path.startswith(c.rstrip("/") + "/")]
    host_file = mounts[mount] / container_path[len(mount.rstrip("/")) + 1 :]
    assert host_file.is_file() and DEPLOY in host_file.parents, host_file
    config = yaml.safe_load(host_file.read_text())
    for key, value in DYNAMIC_CONFIG.items():  # what `mn dev` starts its server with
        (entry,) = config[key]
        assert str(entry["value"]).lower() == value.strip('"'), key  # durations are quoted on the command line


def test_compose_registers_the_search_attributes(compose: dict[str, Any]) -> None:
    setup = next(s for s in compose["services"].values() if "setup-namespace.sh" in json.dumps(s.get("command")))
    assert _interpolate(setup["image"]).startswith("temporalio/admin-tools:")
    temporal_name, _ = _service(compose, ("temporalio/server:", "temporalio/auto-setup:"))
    assert setup["depends_on"][temporal_name]["condition"] == "service_healthy"
    assert _environment(setup)["TEMPORAL_ADDRESS"] == f"{temporal_name}:7233"
    script = _bind_mounts(setup)[setup["command"][0]].read_text()
    listed = re.search(r'SEARCH_ATTRIBUTES="([^"]*)"', script)
    assert listed and listed.group(1).split() == list(SEARCH_ATTRIBUTES)
    assert "--type Keyword" in script


def test_compose_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    worker = next(s for s in services.values() if isinstance(s.get("build"), dict))
    assert worker["build"]["context"] == "." and worker["build"]["dockerfile"] == "deploy/Dockerfile.worker"
    assert (REPO / worker["build"]["context"] / worker["build"]["dockerfile"]) == WORKER_DOCKERFILE
    env = _environment(worker)
    temporal_name, _ = _service(compose, ("temporalio/server:", "temporalio/auto-setup:"))
    assert env["TEMPORAL_ADDRESS"] == f"{temporal_name}:7233"
    assert env["MULTINODE_PROVISIONER"] == "fargate"
    # The Fargate settings come from `terraform output -json worker_environment` as an env file, which
    # git ignores; the worker starts once the namespace and search attributes exist.
    (env_file,) = worker["env_file"]
    assert env_file["path"] == "./deploy/worker.env" and env_file["required"] is False
    assert "worker.env" in (DEPLOY / ".gitignore").read_text().split()
    setup_name = next(n for n, s in services.items() if "setup-namespace.sh" in json.dumps(s.get("command")))
    assert worker["depends_on"][setup_name]["condition"] == "service_completed_successfully"
    for service in services.values():  # every mounted repository file exists
        for host in _bind_mounts(service).values():
            assert host.exists(), host


@pytest.mark.timeout(120)
def test_namespace_setup_script_against_a_dev_server(tmp_path: Path) -> None:
    """deploy/temporal/setup-namespace.sh creates a namespace and the search attributes, idempotently."""
    port = _free_port()
    server = subprocess.Popen(
        [temporal_binary(), "server", "start-dev", "--headless", "--ip", "127.0.0.1", "--port", str(port)]
        + ["--log-level", "error", "--db-filename", str(tmp_path / "temporal.db")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_open("127.0.0.1", port):
            assert server.poll() is None and time.monotonic() < deadline, "dev server did not start"
            time.sleep(0.05)
        env = {
            **os.environ,
            "PATH": f"{Path(temporal_binary()).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
            "NAMESPACE": "multinode-deploy-test",
        }
        script = str(DEPLOY / "temporal" / "setup-namespace.sh")
        for attempt in range(2):
            done = subprocess.run(["sh", script], env=env, capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            if attempt == 0:
                assert "Created namespace multinode-deploy-test" in done.stdout
        assert done.stdout.count("already exists") == len(SEARCH_ATTRIBUTES), done.stdout
        listed = subprocess.run(
            [temporal_binary(), "operator", "search-attribute", "list", "--namespace", "multinode-deploy-test"]
            + ["--address", f"127.0.0.1:{port}", "--output", "json"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        )
        attributes = json.loads(listed.stdout)
        custom = attributes.get("customAttributes", attributes)
        for name in SEARCH_ATTRIBUTES:
            assert "KEYWORD" in str(custom[name]).upper(), custom
    finally:
        server.terminate()
        server.wait(timeout=15)


# --- deploy/Dockerfile.worker -----------------------------------------------------------------------


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in dockerfile.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        logical.append(current + stripped)
        current = ""
    pairs = []
    for line in logical:
        keyword, _, args = line.partition(" ")
        pairs.append((keyword.upper(), args.strip()))
    return pairs


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents wins."""

    def regex(pattern: str) -> str:
        out = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                out, i = out + "(?:.*/)?", i + 3
            elif pattern.startswith("**", i):
                out, i = out + ".*", i + 2
            elif pattern[i] == "*":
                out, i = out + "[^/]*", i + 1
            elif pattern[i] == "?":
                out, i = out + "[^/]", i + 1
            else:
                out, i = out + re.escape(pattern[i]), i + 1
        return out

    parts = path.split("/")
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    ignored = False
    for raw in patterns:
        negated = raw.startswith("!")
        pattern = raw[1:].strip().strip("/") if negated else raw.strip().strip("/")
        if any(re.fullmatch(regex(pattern), candidate) for candidate in candidates):
            ignored = not negated
    return ignored


def test_worker_dockerfile() -> None:
    instructions = _instructions(WORKER_DOCKERFILE)
    args = dict(a.split("=", 1) for k, a in instructions if k == "ARG" and "=" in a)
    stages = [i for i, (k, _) in enumerate(instructions) if k == "FROM"]
    final = instructions[stages[-1] :]

    # Slim Python 3.11+ bases (ARG defaults resolved).
    for k, a in instructions:
        if k == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], a.split()[0])
            version = re.fullmatch(r"python:3\.(\d+)(?:\.\d+)?-slim(?:-\w+)?", image)
            assert version and int(version.group(1)) >= 11, image

    # The final stage runs as a non-root user and starts `mn worker`.
    users = [a for k, a in final if k == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    (cmd,) = [a for k, a in final if k == "CMD"]
    assert json.loads(cmd) == ["mn", "worker"]
    assert any(k == "ENV" and "MULTINODE_PROVISIONER=fargate" in a for k, a in final)

    # The project is installed, with the aws extra (boto3).
    installs = [a for k, a in instructions if k == "RUN" and "pip install" in a]
    assert any(re.search(r"""pip install ["']?\.\[aws\]["']?""", a) for a in installs), installs
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'^aws = \[.*"boto3', pyproject, re.M) and re.search(r'^mn = "multinode\.cli', pyproject, re.M)

    # Everything COPY takes from the context exists and passes the Dockerfile-specific .dockerignore.
    patterns = [p for p in WORKER_DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    copied = []
    for k, a in instructions:
        if k == "COPY" and "--from=" not in a:
            copied += [s for s in a.split()[:-1] if not s.startswith("--")]
    assert copied
    for source in copied:
        assert (REPO / source).exists(), source
        assert not _ignored(source, patterns), source
    assert "README.md" in copied  # pyproject's readme, needed to build the package
    for unwanted in (".venv", ".git", "tests", "multinode/__pycache__", "multinode/cli/__pycache__/x.pyc"):
        assert _ignored(unwanted, patterns), unwanted
    assert not _ignored("multinode/control_plane/worker.py", patterns)


@pytest.mark.timeout(180)
def test_worker_build_context_builds_the_package(tmp_path: Path) -> None:
    """What the Dockerfile's build stage installs: a wheel from only the files the context holds."""
    patterns = [p for p in WORKER_DOCKERIGNORE.read_text().splitlines() if p.strip() and not p.startswith("#")]
    context = tmp_path / "context"
    for folder, dirs, files in os.walk(REPO):
        base = Path(folder).relative_to(REPO)
        dirs[:] = [d for d in dirs if not _ignored((base / d).as_posix(), patterns)]  # no re-inclusions below
        for name in files:
            relative = (base / name).as_posix()
            if not _ignored(relative, patterns):
                (context / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(REPO / relative, context / relative)
    assert sorted(p.name for p in context.iterdir()) == ["README.md", "multinode", "pyproject.toml"]
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path / "dist"), "."],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = (tmp_path / "dist").glob("multinode-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        assert "multinode/control_plane/worker.py" in names and "multinode/cli/__init__.py" in names
        (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert "mn = multinode.cli:main" in archive.read(entry_points).decode()
