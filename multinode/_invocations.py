"""Reading invocations back from Temporal and turning their state into public values."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from typing import Any

from temporalio.client import Client, WorkflowExecutionDescription, WorkflowExecutionStatus, WorkflowFailureError
from temporalio.service import RPCError

from multinode import _serialization
from multinode._client import is_not_found
from multinode._protocol import DESCRIBE_QUERY, INVOCATION_WORKFLOW, SA_STATUS, ErrorInfo, InvocationState
from multinode._types import ErrorDetails, Execution, Invocation, InvocationStatus
from multinode.errors import (
    InvocationCancelledError,
    InvocationFailedError,
    InvocationNotFoundError,
    InvocationTimedOutError,
)


async def describe(client: Client, invocation_id: str) -> WorkflowExecutionDescription:
    try:
        description = await client.get_workflow_handle(invocation_id).describe()
    except RPCError as exc:
        if is_not_found(exc):
            raise InvocationNotFoundError(invocation_id) from exc
        raise
    if description.workflow_type != INVOCATION_WORKFLOW:
        raise InvocationNotFoundError(invocation_id)
    return description


async def read_state(client: Client, invocation_id: str, worker_wait_seconds: float) -> InvocationState:
    """The invocation's state: from its result once closed, else from a query to a worker."""
    description = await describe(client, invocation_id)
    handle = client.get_workflow_handle(invocation_id, run_id=description.run_id, result_type=InvocationState)
    if description.status == WorkflowExecutionStatus.COMPLETED:
        return await handle.result()
    if description.status == WorkflowExecutionStatus.RUNNING:
        try:
            return await handle.query(
                DESCRIBE_QUERY, result_type=InvocationState, rpc_timeout=timedelta(seconds=worker_wait_seconds)
            )
        except RPCError:
            pass  # no worker answered: fall back to what the server itself knows
    return _state_from_description(invocation_id, description)


def _state_from_description(invocation_id: str, description: WorkflowExecutionDescription) -> InvocationState:
    status_values = description.search_attributes.get(SA_STATUS) or ["PENDING"]
    status = str(status_values[0])
    error = None
    if description.status not in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED):
        status = "CANCELLED" if description.status == WorkflowExecutionStatus.CANCELED else "FAILED"
        name = description.status.name if description.status else "UNKNOWN"
        error = ErrorInfo("WorkflowClosedError", f"The invocation's workflow ended as {name} outside Multinode.")
    attrs = description.search_attributes
    parent = (attrs.get("MultinodeParentInvocation") or [None])[0]
    return InvocationState(
        invocation_id=invocation_id,
        project_name=str((attrs.get("MultinodeProject") or [""])[0]),
        version_id=str((attrs.get("MultinodeVersion") or [""])[0]),
        function_name=str((attrs.get("MultinodeFunction") or [""])[0]),
        status=status,
        created_at=description.start_time,
        parent_invocation_id=str(parent) if parent else None,
        finished_at=description.close_time,
        error=error,
        terminated=description.status != WorkflowExecutionStatus.RUNNING,
    )


async def await_state(client: Client, invocation_id: str, timeout: float | None) -> InvocationState:
    description = await describe(client, invocation_id)
    handle = client.get_workflow_handle(invocation_id, run_id=description.run_id, result_type=InvocationState)
    try:
        return await asyncio.wait_for(handle.result(), timeout)
    except WorkflowFailureError:
        return _state_from_description(invocation_id, await describe(client, invocation_id))


def _decode_result(value: Any) -> Any:
    return None if value is None else _serialization.decode(json.dumps(value))


def _details(info: ErrorInfo | None) -> ErrorDetails | None:
    return None if info is None else ErrorDetails(type=info.type, message=info.message, traceback=info.traceback)


def to_invocation(state: InvocationState) -> Invocation:
    return Invocation(
        invocation_id=state.invocation_id,
        status=InvocationStatus(state.status),
        result=_decode_result(state.result),
        error=_details(state.error),
        terminated=state.terminated,
        num_failed_attempts=state.num_failed_attempts,
        function_name=state.function_name,
        project_name=state.project_name,
        version_id=state.version_id,
        parent_invocation_id=state.parent_invocation_id,
        created_at=state.created_at,
        started_at=state.started_at,
        finished_at=state.finished_at,
        executions=[
            Execution(
                execution_id=e.execution_id,
                attempt=e.attempt,
                status=InvocationStatus(e.status),
                started_at=e.started_at,
                finished_at=e.finished_at,
                error=_details(e.error),
                terminated=e.terminated,
            )
            for e in state.executions
        ],
    )


def outcome(state: InvocationState) -> Any:
    """The result of a finished invocation, or the error that says how it ended."""
    status = state.status
    if status == "SUCCEEDED":
        return _decode_result(state.result)
    if status == "CANCELLED":
        raise InvocationCancelledError(
            f"Invocation {state.invocation_id} was cancelled.", invocation_id=state.invocation_id
        )
    if status == "TIMED_OUT":
        raise InvocationTimedOutError(f"Invocation {state.invocation_id} timed out.", invocation_id=state.invocation_id)
    error = state.error or ErrorInfo("Error", "unknown error")
    raise InvocationFailedError(
        f"Invocation {state.invocation_id} of {state.function_name} failed: {error.type}: {error.message}"
        + (f"\nRemote traceback:\n{error.traceback}" if error.traceback else ""),
        invocation_id=state.invocation_id,
        error_type=error.type,
        error_message=error.message,
        traceback=error.traceback,
    )
