"""AWS calls of the Fargate backend: client retries, and which failures become :class:`ProvisionerError`.

Also the form AWS wants a tag value in (:func:`tag_value`), shared by task definitions and tasks.

Every AWS call uses botocore's adaptive retry mode, so throttling (DescribeTasks and RunTask are
rate-limited per account) is retried with backoff. Configuration mistakes become
:class:`ProvisionerError` with what to fix; transient failures (throttling that outlasted the retries,
AWS server errors, network errors) propagate as they are, so the calling activity retries them.
"""

from __future__ import annotations

import re
from typing import Any, cast

from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from multinode.errors import ProvisionerError
from multinode.provisioner.base import CapacityUnavailableError
from multinode.provisioner.fargate_settings import TERRAFORM_DIR, FargateSettings

MAX_POOL_CONNECTIONS = 300
"""HTTP connections a boto3 client keeps open for reuse: one per thread that may call it at once (the
worker's ``MULTINODE_PROVISIONER_THREADS``, at most 256, plus its log reads). botocore's default of 10
would have every call beyond ten open a connection of its own (a TLS handshake), then discard it with
a "Connection pool is full" warning. Connections open only when used."""
RETRY_CONFIG = Config(
    retries={"mode": "adaptive", "max_attempts": 10},
    connect_timeout=10,
    read_timeout=60,
    max_pool_connections=MAX_POOL_CONNECTIONS,
    user_agent_extra="multinode",
)
"""Client-side rate limiting plus exponential backoff for throttled and failed AWS calls."""

_TRANSIENT_CODES = frozenset(
    {
        "ThrottlingException",
        "Throttling",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "ServerException",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "InternalFailure",
        "InternalError",
        "RequestTimeout",
    }
)
_CREDENTIAL_CODES = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "ExpiredTokenException",
        "AuthFailure",
    }
)
_DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
_NETWORK_CODES = frozenset(
    {"InvalidSubnetID.NotFound", "InvalidSubnet", "InvalidGroup.NotFound", "InvalidSecurityGroupID.NotFound"}
)
_TAG_UNSAFE = re.compile(r"[^\w .:/=+\-@]")
_THROTTLING_CODES = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded", "LimitExceededException"}
)
_QUOTA_PHRASES = ("reached the limit on the number of", "vcpu limit", "limit on the number of vcpus")
_CAPACITY_PHRASES = ("capacity is unavailable", "insufficient capacity", "no capacity", "resource:")
_ON_DEMAND_QUOTA = "Fargate On-Demand vCPU resource count (Service Quotas code L-3032A538)"
_SPOT_QUOTA = "Fargate Spot vCPU resource count (Service Quotas code L-36FBB829)"
_QUOTA_REMEDY = (
    "request an increase in the Service Quotas console (AWS Fargate, {quota}) or with `aws service-quotas "
    "request-service-quota-increase --service-code fargate`, or lower max_concurrency of the functions"
)


def call(settings: FargateSettings, operation: str, method: Any, /, **kwargs: Any) -> dict[str, Any]:
    """One AWS call; configuration mistakes become ProvisionerError, transient failures propagate."""
    try:
        return dict(method(**kwargs))
    except NoCredentialsError as exc:
        raise ProvisionerError(
            f"No AWS credentials: the Fargate provisioner cannot call {operation}. Give the control-plane "
            "worker credentials (an IAM role for its ECS task or EC2 instance, AWS_PROFILE, or "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)."
        ) from exc
    except PartialCredentialsError as exc:
        raise ProvisionerError(f"Incomplete AWS credentials ({exc}): set both the key id and the secret.") from exc
    except ClientError as exc:
        translated = _client_error(settings, operation, exc)
        if translated is exc:
            raise
        raise translated from exc
    except BotoCoreError:
        raise  # connection and parsing errors: transient, the activity retries


def call_or_none(
    settings: FargateSettings, codes: set[str], operation: str, method: Any, /, **kwargs: Any
) -> dict[str, Any] | None:
    """:func:`call`, but None when AWS answers with one of these error codes."""
    try:
        return call(settings, operation, method, **kwargs)
    except ProvisionerError as exc:
        if isinstance(exc.__cause__, ClientError) and error_code(exc.__cause__) in codes:
            return None
        raise


def tag_value(value: str) -> str:
    """A tag value ECS accepts: letters, digits, spaces and ``_ . : / = + - @``, at most 256 characters."""
    return _TAG_UNSAFE.sub("_", value)[:256]


def capacity_error(message: str, reason: str, *, spot: bool | None, code: str = "") -> CapacityUnavailableError | None:
    """A :class:`CapacityUnavailableError` when ``reason`` (AWS's words) or ``code`` says the account or
    the region cannot run the task now: a vCPU quota, no Fargate capacity, throttling. None otherwise."""
    lowered = reason.lower()
    quota = _SPOT_QUOTA if spot else _ON_DEMAND_QUOTA if spot is not None else f"{_ON_DEMAND_QUOTA} or {_SPOT_QUOTA}"
    if any(phrase in lowered for phrase in _QUOTA_PHRASES):
        return CapacityUnavailableError(message, limit=quota, remedy=_QUOTA_REMEDY.format(quota=quota))
    if any(phrase in lowered for phrase in _CAPACITY_PHRASES):
        return CapacityUnavailableError(
            message,
            limit="Fargate capacity in the subnets' availability zones",
            remedy="it usually clears within minutes; give MULTINODE_SUBNETS subnets in more availability zones"
            + ("" if spot is False else ", or run the function on FARGATE (MULTINODE_FARGATE_SPOT)"),
        )
    if code in _THROTTLING_CODES or "rate exceeded" in lowered:
        return CapacityUnavailableError(
            message,
            limit="the ECS API request rate of the account (RunTask, DescribeTasks)",
            remedy="request a higher ECS API rate in the Service Quotas console, or run fewer control-plane workers "
            "against the account",
        )
    return None


def _client_error(settings: FargateSettings, operation: str, exc: ClientError) -> Exception:
    code = error_code(exc)
    message = str(exc.response.get("Error", {}).get("Message") or exc)
    where = f"region {settings.region}"
    if code == "ConflictException":
        # RunTask's idempotency token is in use by a task it started with other parameters: the caller
        # adopts that task (``exc.response["resourceIds"]``).
        return ProvisionerError(f"AWS {operation} in {where}: {code}: {message}")
    if operation == "RunTask":
        capacity = capacity_error(f"AWS {operation} in {where}: {code}: {message}", message, spot=None, code=code)
        if capacity is not None:
            return capacity
    if code in _TRANSIENT_CODES or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
        return cast(Exception, exc)  # still failing after botocore's retries: let the activity retry later
    if code == "ClusterNotFoundException":
        return ProvisionerError(
            f"ECS cluster {settings.cluster!r} not found in {where}: set MULTINODE_ECS_CLUSTER to an "
            f"existing cluster (`terraform output ecs_cluster` in {TERRAFORM_DIR}) and "
            "MULTINODE_AWS_REGION to its region."
        )
    if code in _CREDENTIAL_CODES:
        return ProvisionerError(
            f"AWS rejected the control-plane worker's credentials at {operation} ({code}: {message}). "
            "Check or refresh them (expired session tokens need renewing)."
        )
    if code in _DENIED_CODES:
        return ProvisionerError(
            f"AWS denied {operation} in {where} ({message}). The control-plane worker's role needs "
            "ecs:RegisterTaskDefinition, ecs:DescribeTaskDefinition, ecs:RunTask, ecs:DescribeTasks, "
            "ecs:ListTasks, ecs:StopTask, ecs:TagResource, iam:PassRole on the task roles and "
            f"logs:GetLogEvents on {settings.log_group} (the Terraform in {TERRAFORM_DIR} grants them)."
        )
    lowered = message.lower()
    if code in _NETWORK_CODES or (
        operation == "RunTask" and ("subnet" in lowered or "security group" in lowered or "securitygroup" in lowered)
    ):
        return ProvisionerError(
            f"ECS rejected the tasks' network settings at {operation} ({code}: {message}). Set "
            "MULTINODE_SUBNETS and MULTINODE_SECURITY_GROUPS to subnets and security groups of one VPC in "
            f"{where} (`terraform output subnets` and `security_groups` in {TERRAFORM_DIR})."
        )
    if operation == "RunTask" and "role" in lowered:
        return ProvisionerError(
            f"ECS rejected the task roles at {operation} ({code}: {message}). Check "
            "MULTINODE_TASK_EXECUTION_ROLE_ARN and MULTINODE_TASK_ROLE_ARN, and that the worker may pass them."
        )
    return ProvisionerError(f"AWS {operation} failed in {where}: {code}: {message}")


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")
