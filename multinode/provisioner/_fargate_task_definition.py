"""The ECS task definition of an image: what its container runs, and registering it once.

A task definition has one essential container that runs ``python -m multinode._runtime.container`` in
``/app/tasks`` and sends its output to CloudWatch Logs (awslogs). Its family is derived from the image;
a revision is registered only when the family's latest one differs from what this process would
register (a fingerprint tag tells), and the ARN is then cached per image.
"""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

from multinode._credentials import ENV_CONTAINER_SECRETS
from multinode.provisioner._fargate_aws import call, call_or_none, tag_value
from multinode.provisioner.fargate_settings import FargateSettings
from multinode.provisioner.sizing import FARGATE_SIZES

CONTAINER_COMMAND = ["python", "-m", "multinode._runtime.container"]
"""What the container runs; the image's Python has Multinode and the version's requirements."""
CONTAINER_WORKDIR = "/app/tasks"
"""Where the image holds the tasks folder."""
LOG_STREAM_PREFIX = "multinode"
"""awslogs stream prefix: a task's output is in stream ``multinode/CONTAINER_NAME/TASK_ID``."""
CONTAINER_STOP_TIMEOUT_SECONDS = 2
"""Time between SIGTERM and SIGKILL at StopTask. Multinode's own grace period (cancellation or
timeout raised in user code) is over when it stops a task, so this only needs to be short."""

_DEFAULT_CPU, (_DEFAULT_MEMORY, *_) = FARGATE_SIZES[0]


def task_family(settings: FargateSettings, image: str) -> str:
    """``PREFIX-fn-HASH``: one family per image, under a prefix that IAM policies can scope RunTask to."""
    return f"{settings.task_family_prefix}-fn-" + hashlib.sha256(image.encode()).hexdigest()[:24]


def task_definition_request(settings: FargateSettings, image: str) -> dict[str, Any]:
    """RegisterTaskDefinition arguments for ``image`` (the family is derived from the image)."""
    container: dict[str, Any] = {
        "name": settings.container_name,
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
                "awslogs-group": settings.log_group,
                "awslogs-region": settings.region,
                "awslogs-stream-prefix": LOG_STREAM_PREFIX,
            },
        },
    }
    if settings.container_secret_arn:
        # ECS reads the secret with the task execution role when the task starts and sets the variable;
        # DescribeTasks shows only the ARN. The container's runtime takes it out of its environment.
        container["secrets"] = [{"name": ENV_CONTAINER_SECRETS, "valueFrom": settings.container_secret_arn}]
    request: dict[str, Any] = {
        "family": task_family(settings, image),
        "requiresCompatibilities": ["FARGATE"],
        "networkMode": "awsvpc",
        "cpu": str(_DEFAULT_CPU),
        "memory": str(_DEFAULT_MEMORY),
        "executionRoleArn": settings.execution_role_arn,
        "containerDefinitions": [container],
    }
    if settings.task_role_arn:
        request["taskRoleArn"] = settings.task_role_arn
    return request


class TaskDefinitions:
    """Task definition ARNs per image, looked up or registered at most once per process."""

    def __init__(self, settings: FargateSettings, ecs: Any) -> None:
        self.settings = settings
        self._ecs = ecs
        self._lock = threading.Lock()
        self.arns: dict[str, str] = {}
        """image URI -> task definition ARN registered (or found) by this process."""

    def arn(self, image: str) -> str:
        """The ARN of a task definition for ``image``: the latest revision of its family when it matches
        what this provisioner would register, else a new revision."""
        with self._lock:
            cached = self.arns.get(image)
        if cached is not None:
            return cached
        request = task_definition_request(self.settings, image)
        fingerprint = hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()[:32]
        arn: str | None = None
        described = call_or_none(
            self.settings,
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
            registered = call(
                self.settings,
                "RegisterTaskDefinition",
                self._ecs.register_task_definition,
                **request,
                tags=[
                    {"key": "multinode:fingerprint", "value": fingerprint},
                    {"key": "multinode:image", "value": tag_value(image)},
                ],
            )
            arn = str(registered["taskDefinition"]["taskDefinitionArn"])
        with self._lock:
            self.arns[image] = arn
        return arn
