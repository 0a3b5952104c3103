"""AWS Fargate backend: each container is an ECS task on Fargate.

* ``start`` registers (once per image) a task definition with one essential container that runs
  ``python -m multinode._runtime.container`` in ``/app/tasks``, then calls RunTask with the
  function's size (:func:`multinode.provisioner.sizing.fargate_size`), the container's environment and
  tags. ``clientToken`` is the execution id, so ECS starts one task however often ``start`` is retried.
* ``status`` reads DescribeTasks; ``stop`` calls StopTask and waits until the container is gone.
* ``logs`` reads the awslogs stream ``multinode/CONTAINER/TASK_ID`` in CloudWatch Logs.

The handle of a container is its task ARN. Every AWS call uses botocore's adaptive retry mode, so
throttling (DescribeTasks and RunTask are rate-limited per account) is retried with backoff. boto3
honours ``AWS_ENDPOINT_URL`` (used by the tests to talk to moto). Configuration mistakes become
:class:`ProvisionerError` with what to fix; transient failures (throttling that outlasted the retries,
AWS server errors, network errors) propagate as they are, so the calling activity retries them.
"""

from __future__ import annotations

import hashlib
import json
import re
import signal
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, PartialCredentialsError

from multinode.errors import ProvisionerError
from multinode.provisioner.base import ContainerSpec, ContainerStatus, Provisioner
from multinode.provisioner.fargate_settings import TERRAFORM_DIR, FargateSettings
from multinode.provisioner.sizing import FARGATE_SIZES, fargate_size

CONTAINER_COMMAND = ["python", "-m", "multinode._runtime.container"]
"""What the container runs; the image's Python has Multinode and the version's requirements."""
CONTAINER_WORKDIR = "/app/tasks"
"""Where the image holds the tasks folder."""
LOG_STREAM_PREFIX = "multinode"
"""awslogs stream prefix: a task's output is in stream ``multinode/CONTAINER_NAME/TASK_ID``."""
STARTED_BY = "multinode"
"""``startedBy`` of every task Multinode starts (ListTasks filters on it)."""
STOP_REASON = "Stopped by Multinode"
CONTAINER_STOP_TIMEOUT_SECONDS = 2
"""Time between SIGTERM and SIGKILL at StopTask. Multinode's own grace period (cancellation or
timeout raised in user code) is over when it stops a task, so this only needs to be short."""
STOP_WAIT_SECONDS = 180.0
"""How long ``stop`` waits for a stopped task's container to be gone before failing (it is retried)."""
STOP_POLL_SECONDS = 2.0
"""How often ``stop`` checks a task it stopped (DescribeTasks is rate-limited)."""
MISSING_GRACE_SECONDS = 60.0
"""ECS is eventually consistent: DescribeTasks may not know a task for a moment after RunTask. A task
counts as gone only once it has been missing this long."""
DESCRIBE_BATCH = 100
"""Most tasks one DescribeTasks call describes."""
WATCHED_SECONDS = 60.0
"""A task whose status was asked for within this long is refreshed along with the others."""
FORGET_SECONDS = 3600.0
"""Cached descriptions not asked for within this long are dropped."""
REMEMBERED_EXECUTIONS = 10_000
"""How many execution id -> task ARN pairs a provisioner keeps in memory."""
MAX_OVERRIDES_CHARS = 8192
"""ECS rejects RunTask overrides longer than this (JSON included)."""
MAX_EMPTY_LOG_PAGES = 20
"""GetLogEvents may answer a page with no events before the end; read on this many times at most."""
RETRY_CONFIG = Config(
    retries={"mode": "adaptive", "max_attempts": 10},
    connect_timeout=10,
    read_timeout=60,
    user_agent_extra="multinode",
)
"""Client-side rate limiting plus exponential backoff for throttled and failed AWS calls."""

_DEFAULT_CPU, (_DEFAULT_MEMORY, *_) = FARGATE_SIZES[0]
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
_TASK_ID = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")
_EXIT_CODE = re.compile(r"exit code:?\s*(-?\d+)", re.IGNORECASE)
_TAG_UNSAFE = re.compile(r"[^\w .:/=+\-@]")


class FargateProvisioner(Provisioner):
    name = "fargate"
    status_poll_interval = 5.0
    missing_grace_seconds = MISSING_GRACE_SECONDS

    def __init__(self, settings: FargateSettings) -> None:
        self.settings = settings
        session = boto3.session.Session(region_name=settings.region)
        self._ecs = session.client("ecs", config=RETRY_CONFIG)
        self._logs = session.client("logs", config=RETRY_CONFIG)
        self._lock = threading.Lock()
        self._task_definitions: dict[str, str] = {}
        """image URI -> task definition ARN registered by this process."""
        self._tasks: OrderedDict[str, str] = OrderedDict()
        """execution id -> task ARN (the latest ones), for retried starts and for handles given as
        execution ids (``logs`` through the SDK)."""
        self._describe_lock = threading.Lock()
        self._described: dict[str, _Described] = {}
        """task id -> its latest DescribeTasks answer, shared by every ``status`` call (see ``_status_of``)."""

    # --- start ------------------------------------------------------------------------------------

    def start(self, spec: ContainerSpec) -> str:
        image = spec.artifact.get("image")
        if not image:
            raise ProvisionerError(
                f"Version {spec.version_id} of project {spec.project_name!r} has no container image: it was "
                "registered for the local provisioner. Register the project again with MULTINODE_PROVISIONER=fargate "
                "so that registration builds and pushes an image."
            )
        with self._lock:
            known = self._tasks.get(spec.execution_id)
        if known is not None:
            return known
        cpu, memory = fargate_size(spec.cpu, spec.memory_mib)
        overrides = {
            "cpu": str(cpu),
            "memory": str(memory),
            "containerOverrides": [
                {
                    "name": self.settings.container_name,
                    "environment": [{"name": k, "value": v} for k, v in sorted(spec.environment.items())],
                }
            ],
        }
        _check_overrides_size(overrides, spec.environment)
        task_definition = self._task_definition(image)
        network: dict[str, Any] = {
            "subnets": list(self.settings.subnets),
            "assignPublicIp": "ENABLED" if self.settings.assign_public_ip else "DISABLED",
        }
        if self.settings.security_groups:
            network["securityGroups"] = list(self.settings.security_groups)
        tags = {
            "project": spec.project_name,
            "version": spec.version_id,
            "function": spec.function_name,
            "invocation": spec.invocation_id,
            "execution": spec.execution_id,
        }
        response = self._call(
            "RunTask",
            self._ecs.run_task,
            cluster=self.settings.cluster,
            taskDefinition=task_definition,
            launchType="FARGATE",
            count=1,
            startedBy=STARTED_BY,
            clientToken=_client_token(spec.execution_id),
            networkConfiguration={"awsvpcConfiguration": network},
            overrides=overrides,
            tags=[{"key": k, "value": _tag_value(v)} for k, v in tags.items()],
        )
        failures = response.get("failures") or []
        tasks = response.get("tasks") or []
        if failures or not tasks:
            details = "; ".join(
                " ".join(str(f.get(k)) for k in ("reason", "detail", "arn") if f.get(k)) for f in failures
            )
            raise ProvisionerError(
                f"ECS could not start a Fargate task in cluster {self.settings.cluster!r} for execution "
                f"{spec.execution_id} ({cpu / 1024:g} vCPU, {memory} MiB): "
                f"{details or 'RunTask returned no task'}."
            )
        arn = str(tasks[0]["taskArn"])
        self._remember(spec.execution_id, arn)
        return arn

    def task_definition_request(self, image: str) -> dict[str, Any]:
        """RegisterTaskDefinition arguments for ``image`` (the family is derived from the image)."""
        container: dict[str, Any] = {
            "name": self.settings.container_name,
            "image": image,
            "essential": True,
            "command": list(CONTAINER_COMMAND),
            "workingDirectory": CONTAINER_WORKDIR,
            "environment": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
            # Container-level soft limit at Fargate's smallest task memory: never above the task's,
            # so it changes nothing on Fargate, and moto needs a container-level memory value.
            "memoryReservation": _DEFAULT_MEMORY,
            "stopTimeout": CONTAINER_STOP_TIMEOUT_SECONDS,
            "logConfiguration": {
                "logDriver": "awslogs",
                "options": {
                    "awslogs-group": self.settings.log_group,
                    "awslogs-region": self.settings.region,
                    "awslogs-stream-prefix": LOG_STREAM_PREFIX,
                },
            },
        }
        request: dict[str, Any] = {
            "family": "multinode-" + hashlib.sha256(image.encode()).hexdigest()[:24],
            "requiresCompatibilities": ["FARGATE"],
            "networkMode": "awsvpc",
            "cpu": str(_DEFAULT_CPU),
            "memory": str(_DEFAULT_MEMORY),
            "executionRoleArn": self.settings.execution_role_arn,
            "containerDefinitions": [container],
        }
        if self.settings.task_role_arn:
            request["taskRoleArn"] = self.settings.task_role_arn
        return request

    def _task_definition(self, image: str) -> str:
        """The ARN of a task definition for ``image``: the latest revision of its family when it matches
        what this provisioner would register, else a new revision."""
        with self._lock:
            cached = self._task_definitions.get(image)
        if cached is not None:
            return cached
        request = self.task_definition_request(image)
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:32]
        arn: str | None = None
        described = self._call_or_none(
            # ClientException "Unable to describe task definition": the family has none yet. Denied: the
            # worker may only register, which works too (one revision more per worker start).
            {"ClientException", "AccessDeniedException"},
            "DescribeTaskDefinition",
            self._ecs.describe_task_definition,
            taskDefinition=request["family"],
            include=["TAGS"],
        )
        if described is not None:
            definition = described["taskDefinition"]
            tags = {t["key"]: t["value"] for t in described.get("tags") or []}
            if definition.get("status") == "ACTIVE" and tags.get("multinode:fingerprint") == fingerprint:
                arn = str(definition["taskDefinitionArn"])
        if arn is None:
            registered = self._call(
                "RegisterTaskDefinition",
                self._ecs.register_task_definition,
                **request,
                tags=[
                    {"key": "multinode:fingerprint", "value": fingerprint},
                    {"key": "multinode:image", "value": _tag_value(image)},
                ],
            )
            arn = str(registered["taskDefinition"]["taskDefinitionArn"])
        with self._lock:
            self._task_definitions[image] = arn
        return arn

    # --- status and stop --------------------------------------------------------------------------

    def status(self, handle_id: str) -> ContainerStatus:
        arn = self._task_arn(handle_id)
        if arn is None:
            return ContainerStatus(
                "exited", None, f"ECS has no task for {handle_id} in cluster {self.settings.cluster!r}"
            )
        described = self._status_of(arn)
        if described.task is None:
            if described.missing_for() < self.missing_grace_seconds:
                return ContainerStatus("running")  # not visible yet right after RunTask
            return ContainerStatus(
                "exited", None, f"ECS has no task {arn} in cluster {self.settings.cluster!r} (any more)"
            )
        if task_has_exited(described.task, self.settings.container_name):
            return stopped_task_status(described.task, self.settings.container_name)
        return ContainerStatus("running")

    def stop(self, handle_id: str) -> None:
        arn = self._task_arn(handle_id)
        if arn is None:
            return
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        stop_requested = False
        while True:
            described = self._refresh([arn])[0]
            task = described.task
            if task is None:
                if described.missing_for() >= self.missing_grace_seconds:
                    return  # ECS does not know it (any more): nothing runs
            elif task.get("lastStatus") in ("DEPROVISIONING", "STOPPED"):
                return  # DEPROVISIONING: the containers are gone, ECS is detaching the network interface
            elif task.get("desiredStatus") != "STOPPED" and not stop_requested:
                self._call("StopTask", self._ecs.stop_task, cluster=self.settings.cluster, task=arn, reason=STOP_REASON)
                stop_requested = True
                continue
            if time.monotonic() > deadline:
                last = task.get("lastStatus") if task else "not visible"
                raise ProvisionerError(
                    f"ECS task {arn} did not stop within {STOP_WAIT_SECONDS:g} s (last status {last})."
                )
            time.sleep(STOP_POLL_SECONDS)

    # --- logs -------------------------------------------------------------------------------------

    def log_stream(self, task_arn_or_id: str) -> str:
        """The awslogs stream of a task: ``PREFIX/CONTAINER_NAME/TASK_ID``."""
        return f"{LOG_STREAM_PREFIX}/{self.settings.container_name}/{task_arn_or_id.rsplit('/', 1)[-1]}"

    def logs(self, handle_id: str, offset: str | None = None) -> tuple[str, str]:
        arn = self._task_arn(handle_id)
        if arn is None:
            return "", offset or ""
        token = offset or None
        for _ in range(MAX_EMPTY_LOG_PAGES):
            kwargs: dict[str, Any] = {
                "logGroupName": self.settings.log_group,
                "logStreamName": self.log_stream(arn),
                "startFromHead": True,
            }
            if token:
                kwargs["nextToken"] = token
            page = self._call_or_none(
                {"ResourceNotFoundException"}, "GetLogEvents", self._logs.get_log_events, **kwargs
            )
            if page is None:
                return "", offset or ""  # the container has not written yet (or its log group is gone)
            next_token = page.get("nextForwardToken") or token
            events = page.get("events") or []
            if events or next_token == token:
                text = "".join(str(e.get("message", "")) + "\n" for e in events)
                return text, next_token or ""
            token = next_token
        return "", token or ""

    # --- helpers ----------------------------------------------------------------------------------

    def _task_arn(self, handle_id: str) -> str | None:
        """A task ARN (or id) from a handle: the task ARN ``start`` returned, or an execution id."""
        if handle_id.startswith("arn:") or _TASK_ID.match(handle_id):
            return handle_id
        with self._lock:
            known = self._tasks.get(handle_id)
        if known is not None:
            return known
        found = self._find_task(handle_id)
        if found is not None:
            self._remember(handle_id, found)
        return found

    def _remember(self, execution_id: str, arn: str) -> None:
        with self._lock:
            self._tasks[execution_id] = arn
            self._tasks.move_to_end(execution_id)
            while len(self._tasks) > REMEMBERED_EXECUTIONS:
                self._tasks.popitem(last=False)

    def _find_task(self, execution_id: str) -> str | None:
        """The task started for an execution (by its ``execution`` tag), while ECS still lists it
        (stopped tasks stay listed for about an hour)."""
        wanted = _tag_value(execution_id)
        best: dict[str, Any] | None = None
        for desired in ("RUNNING", "STOPPED"):
            arns: list[str] = []
            token: str | None = None
            while True:
                kwargs: dict[str, Any] = {
                    "cluster": self.settings.cluster,
                    "startedBy": STARTED_BY,
                    "desiredStatus": desired,
                }
                if token:
                    kwargs["nextToken"] = token
                page = self._call("ListTasks", self._ecs.list_tasks, **kwargs)
                arns.extend(page.get("taskArns") or [])
                token = page.get("nextToken")
                if not token:
                    break
            for start in range(0, len(arns), 100):
                described = self._call(
                    "DescribeTasks",
                    self._ecs.describe_tasks,
                    cluster=self.settings.cluster,
                    tasks=arns[start : start + 100],
                    include=["TAGS"],
                )
                for task in described.get("tasks") or []:
                    tags = {t.get("key"): t.get("value") for t in task.get("tags") or []}
                    if tags.get("execution") == wanted and (
                        best is None or str(task.get("createdAt", "")) > str(best.get("createdAt", ""))
                    ):
                        best = task
            if best is not None:
                return str(best["taskArn"])
        return None

    def _status_of(self, arn: str) -> _Described:
        """A recent enough description of a task. The control plane watches every running container
        with ``status``; a stale answer is refreshed together with every other watched task whose answer
        is getting old, up to 100 per DescribeTasks call, so the call rate stays about the same however
        many containers run. STOPPED is final and never described again."""
        now = time.monotonic()
        fresh_for = self.status_poll_interval / 2
        with self._describe_lock:  # one refresh at a time: concurrent callers then find fresh answers
            known = self._described.get(_task_id(arn))
            if known is not None:
                known.asked = now
                if known.final or now - known.at < fresh_for:
                    return known
            for key in [k for k, d in self._described.items() if now - d.asked > FORGET_SECONDS]:
                del self._described[key]
            stale = [
                d.arn
                for k, d in self._described.items()
                if k != _task_id(arn)
                and not d.final
                and now - d.asked < WATCHED_SECONDS
                and now - d.at >= fresh_for / 2
            ]
            return self._refresh([arn, *stale[: DESCRIBE_BATCH - 1]], lock_held=True)[0]

    def _refresh(self, arns: list[str], *, lock_held: bool = False) -> list[_Described]:
        """Describe these tasks now (one call), update the shared answers and return them in order."""
        response = self._call("DescribeTasks", self._ecs.describe_tasks, cluster=self.settings.cluster, tasks=arns)
        found = {_task_id(str(t["taskArn"])): dict(t) for t in response.get("tasks") or []}
        now = time.monotonic()
        results: list[_Described] = []
        if not lock_held:
            self._describe_lock.acquire()
        try:
            for arn in arns:
                key = _task_id(arn)
                previous = self._described.get(key)
                described = _Described(
                    arn=arn,
                    task=found.get(key),
                    at=now,
                    asked=previous.asked if previous else now,
                    missing_since=None if key in found else (previous.missing_since if previous else None) or now,
                )
                self._described[key] = described
                results.append(described)
        finally:
            if not lock_held:
                self._describe_lock.release()
        return results

    def _call_or_none(self, codes: set[str], operation: str, method: Any, **kwargs: Any) -> dict[str, Any] | None:
        """``_call``, but None when AWS answers with one of these error codes."""
        try:
            return self._call(operation, method, **kwargs)
        except ProvisionerError as exc:
            if isinstance(exc.__cause__, ClientError) and _code(exc.__cause__) in codes:
                return None
            raise

    def _call(self, operation: str, method: Any, **kwargs: Any) -> dict[str, Any]:
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
            translated = self._client_error(operation, exc)
            if translated is exc:
                raise
            raise translated from exc
        except BotoCoreError:
            raise  # connection and parsing errors: transient, the activity retries

    def _client_error(self, operation: str, exc: ClientError) -> Exception:
        code = _code(exc)
        message = str(exc.response.get("Error", {}).get("Message") or exc)
        where = f"region {self.settings.region}"
        if code in _TRANSIENT_CODES or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) >= 500:
            return exc  # still failing after botocore's retries: let the activity retry later
        if code == "ClusterNotFoundException":
            return ProvisionerError(
                f"ECS cluster {self.settings.cluster!r} not found in {where}: set MULTINODE_ECS_CLUSTER to an "
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
                f"logs:GetLogEvents on {self.settings.log_group} (the Terraform in {TERRAFORM_DIR} grants them)."
            )
        lowered = message.lower()
        if code in _NETWORK_CODES or (
            operation == "RunTask"
            and ("subnet" in lowered or "security group" in lowered or "securitygroup" in lowered)
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


@dataclass
class _Described:
    arn: str
    task: dict[str, Any] | None
    """DescribeTasks' answer; None when ECS reported the task MISSING."""
    at: float
    """When the answer came (time.monotonic)."""
    asked: float
    """When ``status`` last wanted this task."""
    missing_since: float | None = None

    @property
    def final(self) -> bool:
        return self.task is not None and self.task.get("lastStatus") == "STOPPED"

    def missing_for(self) -> float:
        return 0.0 if self.missing_since is None else time.monotonic() - self.missing_since


def _task_id(arn_or_id: str) -> str:
    return arn_or_id.rsplit("/", 1)[-1]


# --- interpreting DescribeTasks -------------------------------------------------------------------


def _container(task: dict[str, Any], container_name: str) -> dict[str, Any]:
    containers = task.get("containers") or []
    for container in containers:
        if container.get("name") == container_name:
            return dict(container)
    return dict(containers[0]) if containers else {}


def task_has_exited(task: dict[str, Any], container_name: str) -> bool:
    """Whether a task's container is gone: the task is STOPPED, or it is being stopped and its
    container has already stopped (ECS takes a while more to release the network interface)."""
    if task.get("lastStatus") == "STOPPED":
        return True
    container = _container(task, container_name)
    return task.get("desiredStatus") == "STOPPED" and container.get("lastStatus") == "STOPPED"


def stopped_task_status(task: dict[str, Any], container_name: str) -> ContainerStatus:
    """Exit code and a readable reason for a stopped task, from what ECS says about it."""
    container = _container(task, container_name)
    stop_code = str(task.get("stopCode") or "")
    stopped_reason = str(task.get("stoppedReason") or "")
    container_reason = str(container.get("reason") or "")
    exit_code: int | None = None
    if container.get("lastStatus") == "STOPPED" and container.get("exitCode") is not None:
        exit_code = int(container["exitCode"])
    else:
        match = _EXIT_CODE.search(stopped_reason) or _EXIT_CODE.search(container_reason)
        if match:
            exit_code = int(match.group(1))
    if "OutOfMemoryError" in container_reason or "OutOfMemoryError" in stopped_reason:
        memory = task.get("memory") or (task.get("overrides") or {}).get("memory")
        limit = f"the task's {memory} MiB" if memory else "the task's memory"
        summary = f"out of memory: the container went over {limit}; raise `memory` in @mn.function"
    elif exit_code is not None:
        summary = "exited normally" if exit_code == 0 else f"exited with code {exit_code}"
        if exit_code > 128:
            try:
                summary += f" (killed by {signal.Signals(exit_code - 128).name})"
            except ValueError:
                pass
    elif stop_code == "TaskFailedToStart":
        summary = "the task failed to start"
    elif stop_code in ("SpotInterruption", "TerminationNotice", "InfrastructureHealth"):
        summary = "AWS stopped the task"
    else:
        summary = "the task stopped"
    details = []
    if stop_code or stopped_reason:
        details.append(": ".join(p for p in (stop_code, stopped_reason) if p))
    if container_reason and container_reason not in stopped_reason:
        details.append(f"container: {container_reason}")
    hint = _hint(f"{stopped_reason} {container_reason}")
    reason = summary + (f" (ECS {'; '.join(details)})" if details else "") + (f"; {hint}" if hint else "")
    return ContainerStatus("exited", exit_code, reason)


def _hint(text: str) -> str:
    if "CannotPullContainerError" in text:
        return (
            "check that the image exists, that the task execution role may pull it, and that the subnets reach "
            "ECR (a NAT gateway, VPC endpoints, or MULTINODE_ASSIGN_PUBLIC_IP=true in a public subnet)"
        )
    if "ResourceInitializationError" in text:
        return (
            "check that the log group exists and that the subnets reach CloudWatch Logs and ECR "
            "(a NAT gateway, VPC endpoints, or MULTINODE_ASSIGN_PUBLIC_IP=true in a public subnet)"
        )
    return ""


# --- small helpers --------------------------------------------------------------------------------


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def _client_token(execution_id: str) -> str:
    """RunTask's idempotency token: the execution id (up to 64 characters, ASCII 33-126)."""
    if len(execution_id) <= 64 and all(33 <= ord(c) <= 126 for c in execution_id):
        return execution_id
    return hashlib.sha256(execution_id.encode()).hexdigest()


def _tag_value(value: str) -> str:
    """A tag value ECS accepts: letters, digits, spaces and ``_ . : / = + - @``, at most 256 characters."""
    return _TAG_UNSAFE.sub("_", value)[:256]


def _check_overrides_size(overrides: dict[str, Any], environment: dict[str, str]) -> None:
    size = len(json.dumps(overrides, separators=(",", ":")))
    if size > MAX_OVERRIDES_CHARS:
        largest = sorted(environment, key=lambda k: len(environment[k]), reverse=True)[:3]
        raise ProvisionerError(
            f"The container's environment is {size} characters as RunTask overrides, over ECS's limit of "
            f"{MAX_OVERRIDES_CHARS}; the largest variables are {', '.join(largest)}. Keep large values "
            "(e.g. TLS certificates) out of the control plane's settings."
        )
