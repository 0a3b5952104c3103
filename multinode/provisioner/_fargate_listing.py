"""Finding Multinode's tasks in the cluster: the task of an execution, and every running one.

ListTasks (filtered on ``startedBy``) then DescribeTasks with their tags, 100 at a time. Used to adopt
a task after a worker restart (by its ``execution`` tag) and by the reconciler (``running_containers``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from multinode.provisioner._fargate_aws import call, tag_value
from multinode.provisioner._fargate_describe import DESCRIBE_BATCH
from multinode.provisioner.base import RunningContainer
from multinode.provisioner.fargate_settings import FargateSettings

STARTED_BY = "multinode"
"""``startedBy`` of every task Multinode starts (ListTasks filters on it)."""


def find_task(settings: FargateSettings, ecs: Any, execution_id: str, start: int | None = None) -> str | None:
    """The task started for an execution (by its ``execution`` tag; with ``start``, by that start's tag
    too), while ECS still lists it (stopped tasks stay listed for about an hour); the newest when it was
    started again."""
    wanted = tag_value(execution_id)

    def matches(task: dict[str, Any]) -> bool:
        tags = tags_of(task)
        return tags.get("execution") == wanted and (start is None or tags.get("start", "0") == str(start))

    for desired in ("RUNNING", "STOPPED"):
        found = [t for t in listed_tasks(settings, ecs, desired) if matches(t)]
        if found:
            return str(max(found, key=lambda t: str(t.get("createdAt", "")))["taskArn"])
    return None


def running_containers(settings: FargateSettings, ecs: Any) -> list[RunningContainer]:
    """Every task Multinode started in the cluster that ECS wants running, with its invocation and namespace."""
    now = time.time()
    containers = []
    for task in listed_tasks(settings, ecs, "RUNNING"):
        tags = tags_of(task)
        created = task.get("createdAt")
        started = created.timestamp() if isinstance(created, datetime) else now
        containers.append(
            RunningContainer(
                handle_id=str(task["taskArn"]),
                invocation_id=tags.get("invocation", ""),
                namespace=tags.get("namespace", ""),
                age_seconds=max(0.0, now - started),
            )
        )
    return containers


def listed_tasks(settings: FargateSettings, ecs: Any, desired: str) -> Iterator[dict[str, Any]]:
    """Multinode's tasks in the cluster with this desired status, described with their tags."""
    arns: list[str] = []
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"cluster": settings.cluster, "startedBy": STARTED_BY, "desiredStatus": desired}
        if token:
            kwargs["nextToken"] = token
        page = call(settings, "ListTasks", ecs.list_tasks, **kwargs)
        arns.extend(page.get("taskArns") or [])
        token = page.get("nextToken")
        if not token:
            break
    for start in range(0, len(arns), DESCRIBE_BATCH):
        described = call(
            settings,
            "DescribeTasks",
            ecs.describe_tasks,
            cluster=settings.cluster,
            tasks=arns[start : start + DESCRIBE_BATCH],
            include=["TAGS"],
        )
        yield from described.get("tasks") or []


def tags_of(task: dict[str, Any]) -> dict[str, str]:
    return {str(t.get("key")): str(t.get("value")) for t in task.get("tags") or []}
