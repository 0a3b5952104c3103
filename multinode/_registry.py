"""Reading and writing the registry kept in Temporal (one ``MultinodeProject`` workflow per project)."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowExecutionStatus, WorkflowUpdateFailedError
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError

from multinode import _limits
from multinode._client import is_not_found
from multinode._codec import PayloadDecryptionError
from multinode._listing import quote_query_value
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
    VersionNotFoundError,
)


def check_project_name(name: str) -> str:
    """``name`` if it is a valid project name (the rules and limits live in ``multinode._limits``)."""
    return _limits.check_project_name(name)


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


_log = logging.getLogger("multinode")
LIST_DESCRIBE_CONCURRENCY = 20
"""Projects described at once by ``list_projects``."""


async def list_projects(client: Client) -> list[str]:
    query = f"WorkflowType = {quote_query_value(PROJECT_WORKFLOW)} AND ExecutionStatus = {quote_query_value('Running')}"
    names = {wf.id.removeprefix(PROJECT_WORKFLOW_ID_PREFIX) async for wf in client.list_workflows(query)}
    # A deleted project's workflow keeps running, as a tombstone that keeps its version numbering. The
    # list's memos lag behind (visibility is updated asynchronously), so each project's is described.
    limit = asyncio.Semaphore(LIST_DESCRIBE_CONCURRENCY)

    async def registered(name: str) -> bool:
        async with limit:
            try:
                description = await client.get_workflow_handle(project_workflow_id(name)).describe()
            except RPCError as exc:
                if is_not_found(exc):
                    return False
                raise
        if description.status != WorkflowExecutionStatus.RUNNING:
            return False
        try:
            state = await description.memo_value(REGISTRY_MEMO_KEY, None, type_hint=ProjectState)
        except PayloadDecryptionError as exc:  # a control plane with other keys shares the namespace
            _log.warning("project %r is not listed: its registry cannot be read here (%s)", name, exc)
            return False
        return state is not None and not state.deleted and bool(state.versions)

    shown = await asyncio.gather(*(registered(name) for name in sorted(names)))
    return [name for name, keep in zip(sorted(names), shown, strict=True) if keep]


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
    initial = await _initial_state(client, project_name)
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


async def _initial_state(client: Client, project_name: str) -> ProjectState:
    """The state a new registry workflow starts with: numbering continues after a closed run (a project
    deleted before deletions left a running tombstone), so that no version id is ever reused."""
    try:
        description = await client.get_workflow_handle(project_workflow_id(project_name)).describe()
    except RPCError as exc:
        if is_not_found(exc):
            return ProjectState(project_name=project_name)
        raise
    if description.status == WorkflowExecutionStatus.RUNNING:
        return ProjectState(project_name=project_name)  # the running workflow is used as it is
    closed = await description.memo_value(REGISTRY_MEMO_KEY, None, type_hint=ProjectState)
    number = closed.next_version_number if closed is not None else 1
    return ProjectState(project_name=project_name, next_version_number=number)


async def delete_project(client: Client, settings: MultinodeSettings, project_name: str) -> None:
    await read_project(client, project_name)
    handle = client.get_workflow_handle(project_workflow_id(project_name))
    try:
        await asyncio.wait_for(handle.execute_update(DELETE_UPDATE), settings.worker_wait_seconds)
    except asyncio.TimeoutError as exc:
        raise ControlPlaneUnavailableError(settings.task_queue, settings.worker_wait_seconds) from exc
