"""Reading and writing the registry kept in Temporal (one ``MultinodeProject`` workflow per project)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import asdict

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from multinode._client import is_not_found
from multinode._protocol import (
    DELETE_UPDATE,
    PROJECT_WORKFLOW,
    PROJECT_WORKFLOW_ID_PREFIX,
    REGISTER_UPDATE,
    REGISTRY_MEMO_KEY,
    ProjectState,
    VersionRecord,
    VersionRegistration,
    project_workflow_id,
)
from multinode._settings import MultinodeSettings
from multinode.errors import (
    ControlPlaneUnavailableError,
    MultinodeError,
    ProjectNotFoundError,
    ValidationError,
    VersionNotFoundError,
)

_PROJECT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def check_project_name(name: str) -> str:
    if not isinstance(name, str) or not _PROJECT_NAME.match(name):
        raise ValidationError(
            f"Project name {name!r} is not valid: use 1-100 letters, digits, '-', '_' or '.', starting with a "
            "letter or digit."
        )
    return name


async def read_project(client: Client, project_name: str) -> ProjectState:
    check_project_name(project_name)
    handle = client.get_workflow_handle(project_workflow_id(project_name))
    try:
        description = await handle.describe()
    except RPCError as exc:
        if is_not_found(exc):
            raise ProjectNotFoundError(project_name) from exc
        raise
    if description.status != WorkflowExecutionStatus.RUNNING:
        raise ProjectNotFoundError(project_name)
    state = await description.memo_value(REGISTRY_MEMO_KEY, None, type_hint=ProjectState)
    if state is None or state.deleted or not state.versions:
        raise ProjectNotFoundError(project_name)
    return state


async def resolve_version(client: Client, project_name: str, version_id: str | None) -> VersionRecord:
    state = await read_project(client, project_name)
    if version_id is None:
        return state.versions[-1]
    for record in state.versions:
        if record.version_id == version_id:
            return record
    raise VersionNotFoundError(project_name, version_id)


async def list_projects(client: Client) -> list[str]:
    query = f"WorkflowType = '{PROJECT_WORKFLOW}' AND ExecutionStatus = 'Running'"
    names = [wf.id.removeprefix(PROJECT_WORKFLOW_ID_PREFIX) async for wf in client.list_workflows(query)]
    return sorted(set(names))


async def check_control_plane(client: Client, settings: MultinodeSettings) -> None:
    """Fail fast, before slow work, when no control-plane worker polls the task queue."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=settings.task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.worker_wait_seconds
    while not (await client.workflow_service.describe_task_queue(request)).pollers:
        if loop.time() > deadline:
            raise ControlPlaneUnavailableError(settings.task_queue, settings.worker_wait_seconds)
        await asyncio.sleep(0.1)


async def register_version(
    client: Client, settings: MultinodeSettings, project_name: str, registration: VersionRegistration
) -> VersionRecord:
    check_project_name(project_name)
    initial = ProjectState(project_name=project_name)
    handle = await client.start_workflow(
        PROJECT_WORKFLOW,
        initial,
        id=project_workflow_id(project_name),
        task_queue=settings.task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        memo={REGISTRY_MEMO_KEY: asdict(initial)},
    )
    try:
        return await asyncio.wait_for(
            handle.execute_update(REGISTER_UPDATE, registration, result_type=VersionRecord),
            settings.worker_wait_seconds,
        )
    except asyncio.TimeoutError as exc:
        raise ControlPlaneUnavailableError(settings.task_queue, settings.worker_wait_seconds) from exc
    except WorkflowUpdateFailedError as exc:
        raise MultinodeError(f"Registering project {project_name!r} failed: {exc.cause}") from exc


async def delete_project(client: Client, settings: MultinodeSettings, project_name: str) -> None:
    await read_project(client, project_name)
    handle = client.get_workflow_handle(project_workflow_id(project_name))
    try:
        await asyncio.wait_for(handle.execute_update(DELETE_UPDATE), settings.worker_wait_seconds)
    except asyncio.TimeoutError as exc:
        raise ControlPlaneUnavailableError(settings.task_queue, settings.worker_wait_seconds) from exc
