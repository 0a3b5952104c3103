"""Reading a DescribeTasks answer: whether a task's container is gone, and why, in words.

Pure functions over the task dicts ECS returns (no AWS calls): the exit code, a readable summary
(out of memory, killed by a signal, failed to start, stopped by AWS), what ECS said, and a hint at the
usual cause of image-pull and network failures.
"""

from __future__ import annotations

import re
import signal
from typing import Any

from multinode._vocabulary import ContainerState, ExitReason
from multinode.provisioner.base import ContainerStatus

_CAPACITY_WORDS = ("capacity is unavailable", "insufficient capacity", "reached the limit on the number of")
_EXIT_CODE = re.compile(r"exit code:?\s*(-?\d+)", re.IGNORECASE)


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
        summary = ExitReason.OUT_OF_MEMORY.with_details(
            f"the container went over {limit}; raise `memory` in @mn.function"
        )
    elif exit_code is not None:
        summary = ExitReason.EXITED_NORMALLY.value if exit_code == 0 else f"exited with code {exit_code}"
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
    # Failed to start for capacity: nothing ran, and starting again later is the remedy.
    no_capacity = stop_code == "TaskFailedToStart" and is_capacity_reason(f"{stopped_reason} {container_reason}")
    return ContainerStatus(ContainerState.EXITED, exit_code, reason, no_capacity=no_capacity)


def is_capacity_reason(text: str) -> bool:
    """Whether ECS's words say the task found no capacity (or hit a vCPU quota) rather than failed."""
    lowered = text.lower()
    return any(phrase in lowered for phrase in _CAPACITY_WORDS)


def _container(task: dict[str, Any], container_name: str) -> dict[str, Any]:
    containers = task.get("containers") or []
    for container in containers:
        if container.get("name") == container_name:
            return dict(container)
    return dict(containers[0]) if containers else {}


def _hint(text: str) -> str:
    if "CannotPullContainerError" in text:
        return (
            "check that the image exists, that the task execution role may pull it, and that the subnets reach "
            "ECR (a NAT gateway, VPC endpoints, or MULTINODE_ASSIGN_PUBLIC_IP=true in a public subnet)"
        )
    if "ResourceInitializationError" in text and "secret" in text.lower():
        return (
            "check that MULTINODE_CONTAINER_SECRET_ARN names an existing secret holding `mn container-secret`'s "
            "output, that the task execution role may read it (secretsmanager:GetSecretValue, or "
            "ssm:GetParameters; kms:Decrypt for a customer-managed key), and that the subnets reach Secrets Manager"
        )
    if "ResourceInitializationError" in text:
        return (
            "check that the log group exists and that the subnets reach CloudWatch Logs and ECR "
            "(a NAT gateway, VPC endpoints, or MULTINODE_ASSIGN_PUBLIC_IP=true in a public subnet)"
        )
    return ""
