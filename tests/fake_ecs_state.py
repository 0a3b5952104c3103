"""What the fake data plane changes in moto's ECS state, where ECS's API cannot: tasks' lifecycle fields.

moto (5.x) keeps ECS tasks as ``moto.ecs.models.Task`` objects in
``ecs_backends[account][region].tasks[cluster_name][task_arn]``, each with one ``Container``
(``task.containers[0]``). DescribeTasks serializes their attributes by name (``stop_code`` as
``stopCode``, ``containers[0].exitCode`` as ``exitCode``; ``None`` is left out), so setting an attribute
shows in the next answer. moto never sets ``stopCode``, a container's ``exitCode`` (always 0),
``reason`` or ``lastStatus`` (always PENDING), and its StopTask marks a task STOPPED at once.

moto's server runs in the test process (``ThreadedMotoServer``), one thread per request, and holds no
lock over its ECS objects. So:

* every change made here happens under :data:`MODEL_LOCK`, which the StopTask hook takes too;
* writes happen in an order that keeps a DescribeTasks answer serialized in the middle consistent: a
  container shows STOPPED only once its exit code, reason and the task's stop code are set, and the
  task's ``desiredStatus``/``lastStatus`` change last.

:func:`watch` hooks a backend's ``stop_task`` and ``run_task`` (instance attributes that shadow moto's
methods; the hooks call moto's own for clusters no fake watches):

* RunTask: a task starts PROVISIONING (the fake makes it RUNNING when its process starts); a
  ``capacityProviderStrategy`` naming a provider the cluster lacks is refused as ECS refuses it; and a
  task on FARGATE or FARGATE_SPOT shows ``launchType`` FARGATE (moto leaves it empty).
* StopTask: records ``stopCode`` UserInitiated, the reason and ``desiredStatus`` STOPPED, and leaves the
  task as it is: the fake stops its process (SIGTERM, ``stopTimeout``, SIGKILL) and then marks it STOPPED.
"""

from __future__ import annotations

import inspect
import threading
from datetime import datetime, timezone
from typing import Any

MODEL_LOCK = threading.RLock()
"""Held while moto's task objects are changed (by the fake's thread or the StopTask hook)."""
USER_STOP_REASON = "Task stopped by user"
"""ECS's ``stoppedReason`` after a StopTask without a reason."""
FARGATE_PROVIDERS = ("FARGATE", "FARGATE_SPOT")

_watched: dict[tuple[int, str], object] = {}
"""(id(backend), cluster name) -> the fake that runs that cluster's tasks."""
_HOOK_MARK = "_multinode_fake_fargate_hook"


def cluster_in_process(account_id: str, region: str, cluster: str) -> tuple[Any, str]:
    """moto's ECS backend holding ``cluster`` in this process, and the cluster's name."""
    from moto.ecs.exceptions import ClusterNotFoundException
    from moto.ecs.models import ecs_backends

    backend = ecs_backends[account_id][region]
    try:
        return backend, str(backend._get_cluster(cluster).name)
    except ClusterNotFoundException:
        raise AssertionError(
            f"moto in this process has no ECS cluster {cluster!r} ({account_id}, {region}): the fake data plane "
            "needs moto's server in the test process (tests/aws.py starts a ThreadedMotoServer)"
        ) from None


def watch(backend: Any, cluster_name: str, watcher: object) -> None:
    """From now on StopTask and RunTask on this cluster behave as ECS's (see the module docstring)."""
    with MODEL_LOCK:
        if not getattr(backend.stop_task, _HOOK_MARK, False):
            _hook(backend)
        _watched[(id(backend), cluster_name)] = watcher


def unwatch(backend: Any, cluster_name: str, watcher: object) -> None:
    with MODEL_LOCK:
        if _watched.get((id(backend), cluster_name)) is watcher:
            del _watched[(id(backend), cluster_name)]


def cluster_tasks(backend: Any, cluster_name: str) -> list[tuple[str, Any]]:
    """(ARN, task) of the cluster's tasks in RunTask order (moto's dict keeps insertion order)."""
    with MODEL_LOCK:
        return list(dict(backend.tasks.get(cluster_name, {})).items())


def _now() -> datetime:
    return datetime.now(timezone.utc)


def request_stop(task: Any, stop_code: str, reason: str) -> bool:
    """What ECS records when a running task is asked to stop; False if it already was."""
    with MODEL_LOCK:
        if task.desired_status == "STOPPED" or task.last_status == "STOPPED":
            return False
        task.stop_code = stop_code
        task.stopped_reason = reason
        task.stopping_at = _now()
        task.desired_status = "STOPPED"  # last: ListTasks(desiredStatus=RUNNING) stops listing it
        return True


def mark_running(task: Any) -> None:
    """The task's container runs."""
    with MODEL_LOCK:
        container = task.containers[0]
        container.exitCode = None  # moto's default 0 would read as an exit
        container.last_status = "RUNNING"
        task.pull_started_at = task.pull_stopped_at = task.started_at = _now()
        if task.last_status in ("PROVISIONING", "PENDING", "ACTIVATING"):
            task.last_status = "RUNNING"


def mark_stopping(task: Any) -> None:
    """ECS is stopping the task's container (after StopTask or an interruption)."""
    with MODEL_LOCK:
        if task.last_status in ("PROVISIONING", "PENDING", "ACTIVATING", "RUNNING", "DEACTIVATING"):
            task.last_status = "STOPPING"


def mark_container_stopped(
    task: Any,
    *,
    exit_code: int | None,
    stop_code: str,
    reason: str,
    container_reason: str | None = None,
    deprovisioning: bool = False,
) -> None:
    """The task's container is gone: its exit code (None when it never ran), and the task's stop code and
    reason unless a stop request already set them. The task is then STOPPED, or DEPROVISIONING when
    ``deprovisioning`` (call :func:`mark_stopped` later)."""
    with MODEL_LOCK:
        container = task.containers[0]
        container.exitCode = exit_code
        if container_reason:
            container.reason = container_reason
        if not getattr(task, "stop_code", None):
            task.stop_code = stop_code
            task.stopped_reason = reason
        now = _now()
        task.execution_stopped_at = now
        if getattr(task, "stopping_at", None) is None:
            task.stopping_at = now
        container.last_status = "STOPPED"
        task.desired_status = "STOPPED"
        if deprovisioning:
            task.last_status = "DEPROVISIONING"
        else:
            task.stopped_at = now
            task.last_status = "STOPPED"


def mark_stopped(task: Any) -> None:
    with MODEL_LOCK:
        task.stopped_at = _now()
        task.last_status = "STOPPED"


def find_task(backend: Any, cluster_name: str, task_arn_or_id: str) -> Any | None:
    task_id = task_arn_or_id.rsplit("/", 1)[-1]
    for arn, task in cluster_tasks(backend, cluster_name):
        if arn.endswith(task_id):
            return task
    return None


def _hook(backend: Any) -> None:
    original_stop = backend.stop_task
    original_run = backend.run_task
    run_signature = inspect.signature(original_run)
    # The hooks rely on these parameter names of moto 5's EC2ContainerServiceBackend: say so if they change.
    expected = {"cluster_str", "capacity_provider_strategy"}
    if not expected <= set(run_signature.parameters) or list(inspect.signature(original_stop).parameters) != [
        "cluster_str",
        "task_str",
        "reason",
    ]:
        raise AssertionError("moto's ECS run_task/stop_task changed: update tests/fake_ecs_state.py")

    def watched_cluster(cluster: str) -> str | None:
        name = str(backend._get_cluster(cluster).name)  # moto's ClusterNotFoundException when unknown
        return name if (id(backend), name) in _watched else None

    def stop_task(cluster_str: str, task_str: str, reason: str) -> Any:
        name = watched_cluster(cluster_str)
        task = find_task(backend, name, task_str) if name else None
        if task is None:
            return original_stop(cluster_str, task_str, reason)
        request_stop(task, "UserInitiated", reason or USER_STOP_REASON)
        return task

    def run_task(*args: Any, **kwargs: Any) -> Any:
        bound = run_signature.bind(*args, **kwargs)
        name = watched_cluster(bound.arguments["cluster_str"])
        if name is None:
            return original_run(*args, **kwargs)
        strategy = bound.arguments.get("capacity_provider_strategy") or []
        attached = backend.clusters[name].capacity_providers or []
        missing = [s["capacityProvider"] for s in strategy if s.get("capacityProvider") not in attached]
        if missing:
            from moto.ecs.exceptions import InvalidParameterException

            raise InvalidParameterException(
                "The specified capacity provider strategy cannot contain a capacity provider that is not "
                "associated with the cluster. Associate the capacity provider with the cluster or specify a "
                f"valid capacity provider and try again. ({', '.join(missing)})"
            )
        with MODEL_LOCK:  # the fake's thread sees the new tasks only once they are PROVISIONING
            tasks = original_run(*args, **kwargs)
            for task in tasks:
                if task.capacity_provider_name in FARGATE_PROVIDERS and not task.launch_type:
                    task.launch_type = "FARGATE"
                task.created_at = _now()
                task.last_status = "PROVISIONING"
        return tasks

    setattr(stop_task, _HOOK_MARK, True)
    backend.stop_task = stop_task
    backend.run_task = run_task
