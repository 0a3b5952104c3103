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

The parts that change for their own reasons live in private modules: AWS calls and error translation
(``_fargate_aws``), the task definition (``_fargate_task_definition``), the shared DescribeTasks answers
(``_fargate_describe``) and reading them into a :class:`ContainerStatus` (``_fargate_status``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections import OrderedDict
from typing import Any

import boto3
from botocore.exceptions import ClientError

from multinode._credentials import has_secrets, public_settings_env
from multinode._vocabulary import ContainerState
from multinode.errors import ProvisionerError
from multinode.provisioner._fargate_aws import (
    RETRY_CONFIG,
    call,
    call_or_none,
    capacity_error,
    error_code,
    tag_value,
)
from multinode.provisioner._fargate_describe import (
    DESCRIBE_BATCH,
    FORGET_SECONDS,
    WATCHED_SECONDS,
    Described,
    TaskDescriptions,
)
from multinode.provisioner._fargate_listing import STARTED_BY, find_task, running_containers
from multinode.provisioner._fargate_status import stopped_task_status, task_has_exited
from multinode.provisioner._fargate_task_definition import (
    CONTAINER_COMMAND,
    CONTAINER_STOP_TIMEOUT_SECONDS,
    CONTAINER_WORKDIR,
    LOG_STREAM_PREFIX,
    TaskDefinitions,
    task_definition_request,
)
from multinode.provisioner.base import (
    CapacityUnavailableError,
    ContainerSpec,
    ContainerStatus,
    Provisioner,
    RunningContainer,
)
from multinode.provisioner.fargate_settings import TERRAFORM_DIR, FargateSettings
from multinode.provisioner.sizing import fargate_size

__all__ = [
    "CONTAINER_COMMAND",
    "CONTAINER_STOP_TIMEOUT_SECONDS",
    "CONTAINER_WORKDIR",
    "DESCRIBE_BATCH",
    "FORGET_SECONDS",
    "LOG_STREAM_PREFIX",
    "MAX_EMPTY_LOG_PAGES",
    "MAX_OVERRIDES_CHARS",
    "MISSING_GRACE_SECONDS",
    "REMEMBERED_EXECUTIONS",
    "RETRY_CONFIG",
    "STARTED_BY",
    "STOP_POLL_SECONDS",
    "STOP_REASON",
    "STOP_WAIT_SECONDS",
    "WATCHED_SECONDS",
    "FargateProvisioner",
    "stopped_task_status",
    "task_has_exited",
]

STOP_REASON = "Stopped by Multinode"
STOP_WAIT_SECONDS = 180.0
"""How long ``stop`` waits for a stopped task's container to be gone before failing (it is retried)."""
STOP_POLL_SECONDS = 2.0
"""How often ``stop`` checks a task it stopped (DescribeTasks is rate-limited)."""
MISSING_GRACE_SECONDS = 60.0
"""ECS is eventually consistent: DescribeTasks may not know a task for a moment after RunTask. A task
counts as gone only once it has been missing this long."""
REMEMBERED_EXECUTIONS = 10_000
"""How many execution id -> task ARN pairs a provisioner keeps in memory."""
MAX_OVERRIDES_CHARS = 8192
"""ECS rejects RunTask overrides longer than this (JSON included)."""
MAX_EMPTY_LOG_PAGES = 20
"""GetLogEvents may answer a page with no events before the end; read on this many times at most."""

_TASK_ID = re.compile(r"^(?:[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})$")


class FargateProvisioner(Provisioner):
    name = "fargate"
    status_poll_interval = 5.0
    stop_poll_interval = STOP_POLL_SECONDS
    missing_grace_seconds = MISSING_GRACE_SECONDS
    may_lack_capacity = True

    def __init__(self, settings: FargateSettings) -> None:
        self.settings = settings
        session = boto3.session.Session(region_name=settings.region)
        self._ecs = session.client("ecs", config=RETRY_CONFIG)
        self._logs = session.client("logs", config=RETRY_CONFIG)
        self._lock = threading.Lock()
        self._definitions = TaskDefinitions(settings, self._ecs)
        self._tasks: OrderedDict[str, str] = OrderedDict()
        """execution id -> task ARN (the latest ones), for retried starts and for handles given as
        execution ids (``logs`` through the SDK)."""
        self._descriptions = TaskDescriptions(self._describe_tasks)

    @property
    def _task_definitions(self) -> dict[str, str]:
        """image URI -> task definition ARN registered by this process."""
        return self._definitions.arns

    @property
    def _described(self) -> dict[str, Described]:
        """task id -> its latest DescribeTasks answer, shared by every ``status`` call."""
        return self._descriptions.answers

    # --- start ------------------------------------------------------------------------------------

    def start(self, spec: ContainerSpec) -> str:
        image = spec.artifact.get("image")
        if not image:
            raise ProvisionerError(
                f"Version {spec.version_id} of project {spec.project_name!r} has no container image: it was "
                "registered for the local provisioner. Register the project again with MULTINODE_PROVISIONER=fargate "
                "so that registration builds and pushes an image."
            )
        key = _start_key(spec)
        with self._lock:
            known = self._tasks.get(key)
        if known is not None:
            return known
        if has_secrets(spec.environment) and not self.settings.container_secret_arn:
            raise ProvisionerError(
                "The containers need secrets (the Temporal profile has credentials, or payloads are encrypted), "
                "and Multinode never passes them as RunTask overrides (anyone with ecs:DescribeTasks reads those). "
                "Put them in a Secrets Manager secret (`mn container-secret` prints its value) and set "
                "MULTINODE_CONTAINER_SECRET_ARN to its ARN (`terraform output container_secret_arn` in "
                f"{TERRAFORM_DIR})."
            )
        environment = public_settings_env(spec.environment)
        cpu, memory = fargate_size(spec.cpu, spec.memory_mib)
        overrides = {
            "cpu": str(cpu),
            "memory": str(memory),
            "containerOverrides": [
                {
                    "name": self.settings.container_name,
                    "environment": [{"name": k, "value": v} for k, v in sorted(environment.items())],
                }
            ],
        }
        _check_overrides_size(overrides, environment)
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
            "namespace": spec.namespace,
            "start": str(spec.start_attempt),
        }
        spot = self.settings.uses_spot(spec.interruptible)
        placement: dict[str, Any] = (
            {"capacityProviderStrategy": [{"capacityProvider": "FARGATE_SPOT", "weight": 1}]}
            if spot
            else {"launchType": "FARGATE"}
        )
        try:
            response = self._call(
                "RunTask",
                self._ecs.run_task,
                cluster=self.settings.cluster,
                taskDefinition=task_definition,
                count=1,
                startedBy=STARTED_BY,
                clientToken=_client_token(key),
                networkConfiguration={"awsvpcConfiguration": network},
                overrides=overrides,
                tags=[{"key": k, "value": tag_value(v)} for k, v in tags.items()],
                **placement,
            )
        except ProvisionerError as exc:
            adopted = self._adopt(exc, spec)
            if adopted is None:
                raise
            response = {"tasks": [{"taskArn": adopted}]}
        failures = response.get("failures") or []
        tasks = response.get("tasks") or []
        if failures or not tasks:
            details = "; ".join(
                " ".join(str(f.get(k)) for k in ("reason", "detail", "arn") if f.get(k)) for f in failures
            )
            message = (
                f"ECS could not start a Fargate task in cluster {self.settings.cluster!r} for execution "
                f"{spec.execution_id} ({cpu / 1024:g} vCPU, {memory} MiB): {details or 'RunTask returned no task'}."
            )
            raise capacity_error(message, details, spot=spot) or ProvisionerError(message)
        arn = str(tasks[0]["taskArn"])
        self._remember(key, arn)
        if key != spec.execution_id:
            self._remember(spec.execution_id, arn)
        return arn

    def _adopt(self, error: ProvisionerError, spec: ContainerSpec) -> str | None:
        """The task a RunTask with this idempotency token already started, when ECS answers a repeated
        RunTask with ConflictException (the same token with other parameters: a worker restarted with
        other settings, say): that task is this start's container."""
        cause = error.__cause__
        if not isinstance(cause, ClientError) or error_code(cause) != "ConflictException":
            return None
        existing = [str(arn) for arn in cause.response.get("resourceIds") or [] if str(arn).startswith("arn:")]
        return existing[0] if existing else find_task(self.settings, self._ecs, spec.execution_id, spec.start_attempt)

    def task_definition_request(self, image: str) -> dict[str, Any]:
        """RegisterTaskDefinition arguments for ``image`` (the family is derived from the image)."""
        return task_definition_request(self.settings, image)

    def _task_definition(self, image: str) -> str:
        """The ARN of a task definition for ``image``, registered at most once per process."""
        return self._definitions.arn(image)

    def no_capacity_error(self, status: ContainerStatus) -> CapacityUnavailableError:
        message = f"The Fargate task failed to start: {status.reason}"
        return capacity_error(message, status.reason, spot=None) or CapacityUnavailableError(message)

    # --- status and stop --------------------------------------------------------------------------

    def status(self, handle_id: str) -> ContainerStatus:
        arn = self._task_arn(handle_id)
        if arn is None:
            return ContainerStatus(
                ContainerState.EXITED, None, f"ECS has no task for {handle_id} in cluster {self.settings.cluster!r}"
            )
        described = self._descriptions.recent(arn, self.status_poll_interval / 2)
        if described.task is None:
            if described.missing_for() < self.missing_grace_seconds:
                # Not visible yet right after RunTask (ECS is eventually consistent): still starting.
                return ContainerStatus(ContainerState.STARTING)
            return ContainerStatus(
                ContainerState.EXITED, None, f"ECS has no task {arn} in cluster {self.settings.cluster!r} (any more)"
            )
        if task_has_exited(described.task, self.settings.container_name):
            return stopped_task_status(described.task, self.settings.container_name)
        if described.task.get("lastStatus") == "PROVISIONING":
            return ContainerStatus(ContainerState.STARTING)  # capacity not found yet: it may still fail to start
        return ContainerStatus(ContainerState.RUNNING)

    def stop(self, handle_id: str) -> None:
        """``request_stop`` until the container is gone, sleeping in between (for callers of their own:
        the control plane's deprovision activity waits between ``request_stop`` calls without a thread)."""
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while not self.request_stop(handle_id):
            if time.monotonic() > deadline:
                arn = self._task_arn(handle_id) or handle_id
                raise ProvisionerError(
                    f"ECS task {arn} did not stop within {STOP_WAIT_SECONDS:g} s "
                    f"(last status {self._descriptions.last_status(arn)})."
                )
            time.sleep(STOP_POLL_SECONDS)

    def request_stop(self, handle_id: str) -> bool:
        """StopTask unless the task is already stopping; whether its container is gone. One DescribeTasks
        at most (shared with the watches' status calls), and StopTask once."""
        arn = self._task_arn(handle_id)
        if arn is None:
            return True
        described = self._descriptions.recent(arn, STOP_POLL_SECONDS / 2)
        task = described.task
        if task is None:
            if described.missing_for() >= self.missing_grace_seconds:
                return True  # ECS does not know it (any more)
            # Not visible yet right after RunTask: ask for the stop anyway (ECS may know it already).
            self._call_or_none(
                {"InvalidParameterException", "ClientException"},
                "StopTask",
                self._ecs.stop_task,
                cluster=self.settings.cluster,
                task=arn,
                reason=STOP_REASON,
            )
            return False
        if _gone(task):
            return True
        if task.get("desiredStatus") == "STOPPED":
            return False  # stopping already: ECS sends SIGTERM, waits stopTimeout, then SIGKILL
        answer = self._call(
            "StopTask", self._ecs.stop_task, cluster=self.settings.cluster, task=arn, reason=STOP_REASON
        )
        self._descriptions.expire(arn)  # the watch's next status call describes the stopping task
        return _gone(answer.get("task") or {})

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
        return find_task(self.settings, self._ecs, execution_id)

    def running_containers(self) -> list[RunningContainer]:
        return running_containers(self.settings, self._ecs)

    def _describe_tasks(self, arns: list[str]) -> list[dict[str, Any]]:
        """One DescribeTasks call (for :class:`TaskDescriptions`): the tasks ECS knows among ``arns``."""
        response = self._call("DescribeTasks", self._ecs.describe_tasks, cluster=self.settings.cluster, tasks=arns)
        return list(response.get("tasks") or [])

    def _call_or_none(self, codes: set[str], operation: str, method: Any, **kwargs: Any) -> dict[str, Any] | None:
        """``_call``, but None when AWS answers with one of these error codes."""
        return call_or_none(self.settings, codes, operation, method, **kwargs)

    def _call(self, operation: str, method: Any, **kwargs: Any) -> dict[str, Any]:
        """One AWS call; configuration mistakes become ProvisionerError, transient failures propagate."""
        return call(self.settings, operation, method, **kwargs)


def _start_key(spec: ContainerSpec) -> str:
    """What identifies one start of an execution's container: the execution id, then ``ID#N`` for the
    N-th start after a failure to start for lack of capacity."""
    return spec.execution_id if spec.start_attempt == 0 else f"{spec.execution_id}#{spec.start_attempt}"


def _gone(task: dict[str, Any]) -> bool:
    """Whether a task's containers are gone (DEPROVISIONING: ECS is detaching its network interface)."""
    return task.get("lastStatus") in ("DEPROVISIONING", "STOPPED")


def _client_token(key: str) -> str:
    """RunTask's idempotency token: the start key (up to 64 characters, ASCII 33-126), else its hash."""
    if len(key) <= 64 and all(33 <= ord(c) <= 126 for c in key):
        return key
    return hashlib.sha256(key.encode()).hexdigest()


def _check_overrides_size(overrides: dict[str, Any], environment: dict[str, str]) -> None:
    size = len(json.dumps(overrides, separators=(",", ":")))
    if size > MAX_OVERRIDES_CHARS:
        largest = sorted(environment, key=lambda k: len(environment[k]), reverse=True)[:3]
        raise ProvisionerError(
            f"The container's environment is {size} characters as RunTask overrides, over ECS's limit of "
            f"{MAX_OVERRIDES_CHARS}; the largest variables are {', '.join(largest)}. Keep large values "
            "out of the control plane's settings (TLS material belongs in MULTINODE_CONTAINER_SECRET_ARN's secret)."
        )
