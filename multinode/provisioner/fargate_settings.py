"""Settings of the AWS Fargate backend, loaded explicitly from the environment (no boto3 here).

=====================================  ==========================================  =========================
Variable                               Meaning                                     ``terraform output``
=====================================  ==========================================  =========================
``MULTINODE_AWS_REGION``               AWS region (else ``AWS_REGION``, else       ``aws_region``
                                       ``AWS_DEFAULT_REGION``)
``MULTINODE_ECS_CLUSTER``              ECS cluster that runs the tasks             ``ecs_cluster``
``MULTINODE_SUBNETS``                  Subnet ids of the tasks, comma-separated    ``subnets``
``MULTINODE_SECURITY_GROUPS``          Security group ids, comma-separated         ``security_groups``
                                       (empty: the VPC's default group)
``MULTINODE_ASSIGN_PUBLIC_IP``         ``true`` when the subnets are public and    ``assign_public_ip``
                                       tasks reach Temporal and ECR through an
                                       internet gateway (default ``false``)
``MULTINODE_TASK_EXECUTION_ROLE_ARN``  Role ECS uses to pull the image and write   ``task_execution_role_arn``
                                       logs
``MULTINODE_TASK_ROLE_ARN``            Role the user's code runs with (optional)   ``task_role_arn``
``MULTINODE_LOG_GROUP``                CloudWatch Logs group of the containers     ``log_group``
                                       (default ``/multinode/functions``)
``MULTINODE_ECR_REPOSITORY``           ECR repository that registration pushes     ``ecr_repository``
                                       version images to (optional)
``MULTINODE_CONTAINER_SECRET_ARN``     Secrets Manager secret (or SSM parameter)   ``container_secret_arn``
                                       holding the containers' Temporal
                                       credentials and encryption keys as JSON
                                       (``mn container-secret`` prints it);
                                       needed when the worker has either
``MULTINODE_TASK_FAMILY_PREFIX``       Prefix of the task-definition families      ``name_prefix``
                                       (``PREFIX-fn-HASH``; default ``multinode``)
``MULTINODE_FARGATE_SPOT``             ``off`` (default), ``retried`` (functions   ``fargate_spot``
                                       with ``max_retries >= 1`` run on
                                       FARGATE_SPOT) or ``all``
=====================================  ==========================================  =========================

``terraform output -json worker_environment`` in ``deploy/terraform`` prints all of them at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

from multinode.errors import ConfigurationError

DEFAULT_CONTAINER_NAME = "multinode"
"""Name of the one container of every Multinode task definition (also part of its log stream names)."""
DEFAULT_LOG_GROUP = "/multinode/functions"
"""CloudWatch Logs group the containers write to when ``MULTINODE_LOG_GROUP`` is unset."""
DEFAULT_ASSIGN_PUBLIC_IP = False
"""Tasks get no public IP unless asked: private subnets reach AWS and Temporal through a NAT gateway."""
DEFAULT_TASK_FAMILY_PREFIX = "multinode"
"""Task-definition families are ``PREFIX-fn-HASH``: IAM can scope RunTask to ``PREFIX-fn-*``."""
SPOT_MODES = ("off", "retried", "all")
"""``MULTINODE_FARGATE_SPOT``: which functions run on FARGATE_SPOT. ``retried``: those with
``max_retries >= 1``, which tolerate the interruption (a Spot reclaim fails the attempt, and it is retried)."""
DEFAULT_SPOT = "off"

TERRAFORM_DIR = "deploy/terraform"
"""Where the Terraform that creates these resources lives; ``terraform output`` there prints the values."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class FargateSettings(BaseModel):
    """Where and how the Fargate backend runs tasks."""

    model_config = ConfigDict(frozen=True)

    region: str
    cluster: str
    """ECS cluster name or ARN."""
    subnets: list[str]
    security_groups: list[str] = Field(default_factory=list)
    assign_public_ip: bool = DEFAULT_ASSIGN_PUBLIC_IP
    execution_role_arn: str
    task_role_arn: str | None = None
    log_group: str = DEFAULT_LOG_GROUP
    ecr_repository: str | None = None
    container_name: str = DEFAULT_CONTAINER_NAME
    container_secret_arn: str | None = None
    """Where containers' secrets (Temporal credentials, encryption keys) come from: task definitions
    map it into ``MULTINODE_SECRETS``, never RunTask overrides."""
    task_family_prefix: str = DEFAULT_TASK_FAMILY_PREFIX
    spot: str = DEFAULT_SPOT

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FargateSettings:
        env = os.environ if environ is None else environ
        region = _region(env)
        if not region:
            raise _missing(
                "MULTINODE_AWS_REGION",
                "the AWS region of the ECS cluster, e.g. us-east-1 (AWS_REGION or AWS_DEFAULT_REGION also work)",
                "aws_region",
            )
        cluster = _required(env, "MULTINODE_ECS_CLUSTER", "the name or ARN of the ECS cluster", "ecs_cluster")
        subnets = _ids(env, "MULTINODE_SUBNETS", "subnet-")
        if not subnets:
            raise _missing("MULTINODE_SUBNETS", "the comma-separated ids of the subnets the tasks run in", "subnets")
        return cls(
            region=region,
            cluster=cluster,
            subnets=subnets,
            security_groups=_ids(env, "MULTINODE_SECURITY_GROUPS", "sg-"),
            assign_public_ip=_bool(env, "MULTINODE_ASSIGN_PUBLIC_IP", DEFAULT_ASSIGN_PUBLIC_IP),
            execution_role_arn=_arn(
                env,
                "MULTINODE_TASK_EXECUTION_ROLE_ARN",
                "the ARN of the role ECS uses to pull images and write logs",
                "task_execution_role_arn",
                required=True,
            )
            or "",
            task_role_arn=_arn(
                env, "MULTINODE_TASK_ROLE_ARN", "the ARN of the role user code runs with", "task_role_arn"
            ),
            log_group=_get(env, "MULTINODE_LOG_GROUP") or DEFAULT_LOG_GROUP,
            ecr_repository=_get(env, "MULTINODE_ECR_REPOSITORY") or None,
            container_secret_arn=_arn(
                env,
                "MULTINODE_CONTAINER_SECRET_ARN",
                "the ARN of the Secrets Manager secret or SSM parameter holding the containers' credentials",
                "container_secret_arn",
                example="arn:aws:secretsmanager:REGION:ACCOUNT:secret:NAME",
            ),
            task_family_prefix=_family_prefix(env),
            spot=_spot(env),
        )

    def to_env(self) -> dict[str, str]:
        """Environment that reproduces these settings in another process."""
        env = {
            "MULTINODE_AWS_REGION": self.region,
            "MULTINODE_ECS_CLUSTER": self.cluster,
            "MULTINODE_SUBNETS": ",".join(self.subnets),
            "MULTINODE_SECURITY_GROUPS": ",".join(self.security_groups),
            "MULTINODE_ASSIGN_PUBLIC_IP": "true" if self.assign_public_ip else "false",
            "MULTINODE_TASK_EXECUTION_ROLE_ARN": self.execution_role_arn,
            "MULTINODE_LOG_GROUP": self.log_group,
        }
        if self.task_role_arn:
            env["MULTINODE_TASK_ROLE_ARN"] = self.task_role_arn
        if self.ecr_repository:
            env["MULTINODE_ECR_REPOSITORY"] = self.ecr_repository
        if self.container_secret_arn:
            env["MULTINODE_CONTAINER_SECRET_ARN"] = self.container_secret_arn
        env["MULTINODE_TASK_FAMILY_PREFIX"] = self.task_family_prefix
        env["MULTINODE_FARGATE_SPOT"] = self.spot
        return env

    def uses_spot(self, retried: bool) -> bool:
        """Whether a function (retried or not) runs on FARGATE_SPOT."""
        return self.spot == "all" or (self.spot == "retried" and retried)


def _get(env: Mapping[str, str], name: str) -> str:
    return (env.get(name) or "").strip()


def _missing(name: str, what: str, terraform_output: str) -> ConfigurationError:
    return ConfigurationError(
        f"{name} is not set: the Fargate provisioner needs {what}. Set {name}; the Terraform in "
        f"{TERRAFORM_DIR} creates it (`terraform output {terraform_output}` there prints the value).",
        parameter=name,
    )


def _required(env: Mapping[str, str], name: str, what: str, terraform_output: str) -> str:
    value = _get(env, name)
    if not value:
        raise _missing(name, what, terraform_output)
    return value


def _ids(env: Mapping[str, str], name: str, prefix: str) -> list[str]:
    ids = [part.strip() for part in _get(env, name).split(",") if part.strip()]
    wrong = [i for i in ids if not i.startswith(prefix)]
    if wrong:
        raise ConfigurationError(
            f"{name}={env.get(name)!r} is not a comma-separated list of {prefix}... ids (not: {', '.join(wrong)}).",
            parameter=name,
        )
    return ids


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _get(env, name).lower()
    if name not in env:
        return default
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigurationError(f"{name}={env.get(name)!r} must be true or false.", parameter=name)


def _arn(
    env: Mapping[str, str],
    name: str,
    what: str,
    terraform_output: str,
    *,
    required: bool = False,
    example: str = "arn:aws:iam::ACCOUNT:role/NAME",
) -> str | None:
    value = _get(env, name)
    if not value:
        if required:
            raise _missing(name, what, terraform_output)
        return None
    if not value.startswith("arn:"):
        raise ConfigurationError(f"{name}={value!r} is not an ARN: set it to {what} ({example}).", parameter=name)
    return value


def _family_prefix(env: Mapping[str, str]) -> str:
    prefix = _get(env, "MULTINODE_TASK_FAMILY_PREFIX") or DEFAULT_TASK_FAMILY_PREFIX
    # A family is up to 255 letters, digits, hyphens and underscores; "-fn-" and 24 hex follow the prefix.
    if len(prefix) > 200 or not prefix.replace("-", "").replace("_", "").isalnum() or not prefix.isascii():
        raise ConfigurationError(
            f"MULTINODE_TASK_FAMILY_PREFIX={prefix!r} must be up to 200 ASCII letters, digits, hyphens and "
            "underscores (Terraform's name_prefix).",
            parameter="MULTINODE_TASK_FAMILY_PREFIX",
        )
    return prefix


def _spot(env: Mapping[str, str]) -> str:
    mode = _get(env, "MULTINODE_FARGATE_SPOT").lower() or DEFAULT_SPOT
    if mode not in SPOT_MODES:
        raise ConfigurationError(
            f"MULTINODE_FARGATE_SPOT={env.get('MULTINODE_FARGATE_SPOT')!r} must be one of {', '.join(SPOT_MODES)}.",
            parameter="MULTINODE_FARGATE_SPOT",
        )
    return mode


def _region(env: Mapping[str, str]) -> str | None:
    return _get(env, "MULTINODE_AWS_REGION") or _get(env, "AWS_REGION") or _get(env, "AWS_DEFAULT_REGION") or None


def image_repository_from_env(environ: Mapping[str, str] | None = None) -> tuple[str | None, str | None]:
    """``(MULTINODE_ECR_REPOSITORY, region)``: all that registration needs to push an image (the other
    settings are the worker's)."""
    env = os.environ if environ is None else environ
    return _get(env, "MULTINODE_ECR_REPOSITORY") or None, _region(env)
