"""Reading invocations back from Temporal and turning their state into public values."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import HistoryEventFilterType, TaskQueueType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest, GetWorkflowExecutionHistoryRequest
from temporalio.client import (
    Client,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowQueryFailedError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from multinode import _serialization
from multinode._client import is_not_found
from multinode._protocol import (
    DESCRIBE_QUERY,
    INVOCATION_WORKFLOW,
    LOG_READER_WORKFLOW,
    READ_LOGS_QUERY,
    RUN_FUNCTION_ACTIVITY,
    SA_STATUS,
    ErrorInfo,
    InvocationState,
    LogsChunk,
    LogsRequest,
    log_reader_workflow_id,
)
from multinode._settings import MultinodeSettings
from multinode._types import ErrorDetails, Execution, Invocation
from multinode._vocabulary import FINAL_STATUSES, ErrorType, InvocationStatus
from multinode.errors import (
    ControlPlaneUnavailableError,
    InvocationCancelledError,
    InvocationFailedError,
    InvocationNotFoundError,
    InvocationTimedOutError,
    MultinodeError,
    NotFoundError,
    PayloadError,
    ValidationError,
)


def check_invocation_id(invocation_id: str) -> None:
    """An empty id would reach Temporal, whose answer ("WorkflowId is not set on request") names neither."""
    if not invocation_id.strip():
        raise ValidationError(
            f"The invocation id is empty ({invocation_id!r}). Ids look like inv-<32 hex digits>; `.start()` and "
            "`mn invoke` print them, `mn list FUNCTION --project NAME` lists recent ones."
        )


async def describe(client: Client, invocation_id: str) -> WorkflowExecutionDescription:
    check_invocation_id(invocation_id)  # every read of an invocation goes through here
    try:
        description = await client.get_workflow_handle(invocation_id).describe()
    except RPCError as exc:
        if is_not_found(exc):
            raise InvocationNotFoundError(invocation_id) from exc
        raise
    if description.workflow_type != INVOCATION_WORKFLOW:
        raise InvocationNotFoundError(invocation_id)
    return description


async def read_state(client: Client, invocation_id: str, settings: MultinodeSettings) -> InvocationState:
    """The invocation's state: from its result once closed, else from a query to a worker (without
    one, from search attributes: status, but no executions or progress, and a warning once)."""
    description = await describe(client, invocation_id)
    handle = client.get_workflow_handle(invocation_id, run_id=description.run_id, result_type=InvocationState)
    if description.status == WorkflowExecutionStatus.COMPLETED:
        completed: InvocationState = await handle.result()
        return completed
    if description.status == WorkflowExecutionStatus.RUNNING:
        try:
            state: InvocationState = await handle.query(
                DESCRIBE_QUERY, result_type=InvocationState, rpc_timeout=timedelta(seconds=settings.worker_wait_seconds)
            )
        except RPCError:
            _warn_no_worker(settings, "status from search attributes only, no executions or progress")
            state = _state_from_description(invocation_id, description)
        progress = await _heartbeat_progress(client, description)
        if progress is not None and state.status not in FINAL_STATUSES:
            state.result = progress
        return state
    return _state_from_description(invocation_id, description)


HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT = HistoryEventFilterType.HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT
_log = logging.getLogger("multinode")

DEFAULT_LOG_SETTLE_SECONDS = 60.0
"""How long ``follow`` keeps reading an ended invocation's logs while its containers are being stopped."""


async def _heartbeat_progress(client: Client, description: WorkflowExecutionDescription) -> Any:
    """The latest yield, from the running execution's last heartbeat (fresher than any signal)."""
    for pending in description.raw_description.pending_activities:
        if pending.activity_type.name == RUN_FUNCTION_ACTIVITY and pending.heartbeat_details.payloads:
            values = await client.data_converter.decode(list(pending.heartbeat_details.payloads), [str])
            return json.loads(values[0]) if values and values[0] else None
    return None


def _state_from_description(invocation_id: str, description: WorkflowExecutionDescription) -> InvocationState:
    status_values = description.search_attributes.get(SA_STATUS) or [InvocationStatus.PENDING]
    status = str(status_values[0])
    error = None
    if description.status not in (WorkflowExecutionStatus.RUNNING, WorkflowExecutionStatus.COMPLETED):
        canceled = description.status == WorkflowExecutionStatus.CANCELED
        status = InvocationStatus.CANCELLED if canceled else InvocationStatus.FAILED
        name = description.status.name if description.status else "UNKNOWN"
        error = ErrorInfo(ErrorType.WORKFLOW_CLOSED, f"The invocation's workflow ended as {name} outside Multinode.")
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


async def await_state(
    client: Client, invocation_id: str, timeout: float | None, settings: MultinodeSettings
) -> InvocationState:
    """The final state; ``asyncio.TimeoutError`` if the invocation is still running after ``timeout``.

    Says once (a warning) when no control-plane worker answers, since then it may wait for ever.
    """
    description = await describe(client, invocation_id)
    handle = client.get_workflow_handle(invocation_id, run_id=description.run_id, result_type=InvocationState)
    if description.status == WorkflowExecutionStatus.RUNNING:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        first = settings.worker_wait_seconds if timeout is None else min(timeout, settings.worker_wait_seconds)
        closed = await _wait_close(client, invocation_id, description.run_id, first)
        if closed is None:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise asyncio.TimeoutError
            answered = await _worker_answers(handle, min(settings.worker_wait_seconds, remaining or math.inf))
            # A worker too busy to answer a query in time (a burst of starts) is not a missing worker.
            if not answered and not await _worker_polls(client, settings):
                _warn_no_worker(settings, f"waiting for invocation {invocation_id}")
            remaining = None if deadline is None else deadline - loop.time()
            closed = await _wait_close(client, invocation_id, description.run_id, remaining)
            if closed is None:
                raise asyncio.TimeoutError
        if closed.HasField("workflow_execution_completed_event_attributes"):
            # The close event the long poll returned holds the result: no second round trip for it.
            payloads = closed.workflow_execution_completed_event_attributes.result.payloads
            [decoded] = await client.data_converter.decode(payloads, [InvocationState])
            assert isinstance(decoded, InvocationState)
            return decoded
    try:
        result: InvocationState = await handle.result()
        return result
    except WorkflowFailureError:
        return _state_from_description(invocation_id, await describe(client, invocation_id))


LOGS_READ_SECONDS = 30.0
"""How long one chunk of a log read may take on a worker whose backend is slow (it answers "pending")."""
MIN_LONG_POLL_SECONDS = 2.0
"""Shorter waits than this look every SHORT_WAIT_POLL_SECONDS instead (such a long poll returns at once)."""
SHORT_WAIT_POLL_SECONDS = 0.2
"""How often a short wait looks whether the workflow has closed."""
LONG_POLL_SECONDS = 60.0
"""Deadline of one long poll for a workflow's close (renewed until the caller's own deadline)."""


async def wait_closed(client: Client, workflow_id: str, run_id: str | None, timeout: float | None) -> bool:
    """Wait until the workflow closes (True) or ``timeout`` seconds pass (False; None waits for ever)."""
    return await _wait_close(client, workflow_id, run_id, timeout) is not None


_CLOSED_UNSEEN = HistoryEvent()
"""The workflow is closed, as a describe said (so its close event was not fetched)."""


async def _wait_close(
    client: Client, workflow_id: str, run_id: str | None, timeout: float | None
) -> HistoryEvent | None:
    """The workflow's close event once it closes (or ``_CLOSED_UNSEEN``), None once ``timeout`` passes.

    Every long poll carries its own deadline instead of being abandoned by a timeout: an abandoned
    RPC stays in flight in Temporal's native client, where it can crash a program that exits meanwhile.
    """
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + max(timeout, 0.0)
    token = b""
    while True:
        remaining = LONG_POLL_SECONDS if deadline is None else min(deadline - loop.time(), LONG_POLL_SECONDS)
        if remaining < MIN_LONG_POLL_SECONDS:
            # The server answers a long poll this short at once, empty: look now and then instead.
            while not await _is_closed(client, workflow_id, run_id):
                left = deadline - loop.time() if deadline is not None else SHORT_WAIT_POLL_SECONDS
                if left <= 0:
                    return None
                await asyncio.sleep(min(left, SHORT_WAIT_POLL_SECONDS))
            return _CLOSED_UNSEEN
        request = GetWorkflowExecutionHistoryRequest(
            namespace=client.namespace,
            execution=WorkflowExecution(workflow_id=workflow_id, run_id=run_id or ""),
            wait_new_event=True,
            history_event_filter_type=HISTORY_EVENT_FILTER_TYPE_CLOSE_EVENT,
            skip_archival=True,
            next_page_token=token,
        )
        try:
            response = await client.workflow_service.get_workflow_execution_history(
                request, retry=True, timeout=timedelta(seconds=remaining)
            )
        except RPCError as exc:
            # The deadline passed: DEADLINE_EXCEEDED from the server, CANCELLED ("Timeout expired") from
            # the client's own timer. The loop ends once the caller's deadline has passed.
            if exc.status in (RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED):
                token = b""
                continue
            raise
        if response.history.events:
            return response.history.events[-1]
        token = response.next_page_token


async def _is_closed(client: Client, workflow_id: str, run_id: str | None) -> bool:
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    description = await handle.describe(rpc_timeout=timedelta(seconds=LONG_POLL_SECONDS))
    return description.status != WorkflowExecutionStatus.RUNNING


async def _worker_polls(client: Client, settings: MultinodeSettings) -> bool:
    """Whether a control-plane worker has polled the task queue lately (the server remembers pollers for
    a few minutes)."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=settings.task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    return bool((await client.workflow_service.describe_task_queue(request)).pollers)


async def _worker_answers(handle: Any, wait_seconds: float) -> bool:
    try:
        await handle.query(DESCRIBE_QUERY, rpc_timeout=timedelta(seconds=wait_seconds))
    except RPCError:
        return False
    return True


_warned: set[str] = set()


def _warn_no_worker(settings: MultinodeSettings, doing: str) -> None:
    """Say once per task queue and process that nothing serves it (a waiting call would look hung)."""
    if settings.task_queue not in _warned:
        _warned.add(settings.task_queue)
        _log.warning(
            "No Multinode control-plane worker answered on task queue %r within %g s (%s). Invocations wait "
            "PENDING until one runs: start `mn dev` (local stack) or `mn worker`.",
            settings.task_queue,
            settings.worker_wait_seconds,
            doing,
        )


def _decode_result(value: Any) -> Any:
    return None if value is None else _serialization.decode(json.dumps(value), what="The result")


def _decode_for_display(value: Any) -> Any:
    """The result for ``.get()``: decoded, or its raw JSON when this program lacks one of its classes
    (so the status can still be read; ``.await_result`` raises the PayloadError instead)."""
    try:
        return _decode_result(value)
    except PayloadError:
        return value


def _details(info: ErrorInfo | None) -> ErrorDetails | None:
    return None if info is None else ErrorDetails(type=info.type, message=info.message, traceback=info.traceback)


def to_invocation(state: InvocationState) -> Invocation:
    return Invocation(
        invocation_id=state.invocation_id,
        status=InvocationStatus(state.status),
        result=_decode_for_display(state.result),
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
                waiting_for_capacity=e.waiting_for_capacity,
            )
            for e in state.executions
        ],
    )


def outcome(state: InvocationState) -> Any:
    """The result of a finished invocation, or the error that says how it ended."""
    status = state.status
    if status == InvocationStatus.SUCCEEDED:
        return _decode_result(state.result)
    if status == InvocationStatus.CANCELLED:
        raise InvocationCancelledError(
            f"Invocation {state.invocation_id} was cancelled.", invocation_id=state.invocation_id
        )
    if status == InvocationStatus.TIMED_OUT:
        raise InvocationTimedOutError(f"Invocation {state.invocation_id} timed out.", invocation_id=state.invocation_id)
    error = state.error or ErrorInfo(ErrorType.ERROR, "unknown error")
    raise InvocationFailedError(
        f"Invocation {state.invocation_id} of {state.function_name} failed: {error.type}: {error.message}"
        + (f"\nRemote traceback:\n{error.traceback}" if error.traceback else ""),
        invocation_id=state.invocation_id,
        error_type=error.type,
        error_message=error.message,
        traceback=error.traceback,
    )


async def read_logs(
    client: Client,
    settings: MultinodeSettings,
    state: InvocationState,
    execution_id: str | None,
    offset: str | None,
) -> LogsChunk:
    """A chunk of one execution's output (the latest execution unless one is named)."""
    known = [e.execution_id for e in state.executions]
    if execution_id is not None and execution_id not in known:
        raise NotFoundError(
            f"Invocation {state.invocation_id} has no execution {execution_id!r}; it has: {', '.join(known) or 'none'}."
        )
    chosen = execution_id or (known[-1] if known else None)
    if chosen is None:
        return LogsChunk(text="", offset=offset or "")
    handle = next((e.container_handle for e in state.executions if e.execution_id == chosen), None)
    request = LogsRequest(provisioner=state.provisioner, execution_id=chosen, offset=offset, container_handle=handle)
    return await _query_log_reader(client, settings, request)


STICKY_FALLBACK_SECONDS = 10.0
"""After the worker that last ran a workflow dies, how long the server may go on sending the workflow's
queries to that worker's own (sticky) queue before it sends them to the task queue: the SDK's sticky
queue schedule-to-start timeout."""
_TIMED_OUT = frozenset({RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.CANCELLED})


async def _query_log_reader(client: Client, settings: MultinodeSettings, request: LogsRequest) -> LogsChunk:
    """Ask the task queue's log reader workflow for a chunk: a query, so nothing is recorded in Temporal."""
    reader = client.get_workflow_handle(log_reader_workflow_id(settings.task_queue))
    loop = asyncio.get_running_loop()
    begun = loop.time()
    started = False
    while True:
        try:
            chunk: LogsChunk = await reader.query(
                READ_LOGS_QUERY,
                request,
                result_type=LogsChunk,
                rpc_timeout=timedelta(seconds=settings.worker_wait_seconds),
            )
        except WorkflowQueryFailedError as exc:
            raise MultinodeError(f"Could not read the output of execution {request.execution_id}: {exc}") from exc
        except RPCError as exc:
            waited = loop.time() - begun
            if is_not_found(exc) and not started:
                # Never started on this queue (its workers predate the log reader), or gone: start it.
                await client.start_workflow(
                    LOG_READER_WORKFLOW,
                    id=reader.id,
                    task_queue=settings.task_queue,
                    id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                )
                started = True
                continue
            if exc.status == RPCStatusCode.FAILED_PRECONDITION:
                # Its first workflow task has not completed (the server waits a second for it): no worker
                # yet, or only workers that predate the log reader.
                if waited < settings.worker_wait_seconds:
                    await asyncio.sleep(SHORT_WAIT_POLL_SECONDS)
                    continue
                raise ControlPlaneUnavailableError(settings.task_queue, round(waited)) from exc
            if exc.status in _TIMED_OUT:
                # A worker polls, but the one that ran the reader last may have died with the query sent to it.
                if waited < settings.worker_wait_seconds + STICKY_FALLBACK_SECONDS and await _worker_polls(
                    client, settings
                ):
                    continue
                raise ControlPlaneUnavailableError(settings.task_queue, round(waited)) from exc
            raise
        if not chunk.pending:
            return chunk
        if loop.time() - begun > LOGS_READ_SECONDS:  # the worker's backend is slow: each query waited a second
            raise MultinodeError(
                f"Reading the output of execution {request.execution_id} took more than {LOGS_READ_SECONDS:g} s "
                "on the control-plane worker; try again."
            )


async def log_chunks(
    client: Client,
    settings: MultinodeSettings,
    invocation_id: str,
    execution_id: str | None,
    *,
    follow: bool,
    poll_seconds: float = 1.0,
) -> AsyncIterator[str]:
    """An execution's output in chunks; with ``follow``, keep reading until the invocation ends.

    Following ends only once the containers are gone too (``terminated``): a backend whose logs trail
    the output (CloudWatch) has its last lines by then.
    """
    offset: str | None = None
    reading = execution_id  # the execution `offset` belongs to: the latest one, read to its end, until a retry
    state: InvocationState | None = None
    final_since: float | None = None
    while True:
        if state is None or not (state.status in FINAL_STATUSES and state.terminated):
            state = await read_state(client, invocation_id, settings)
        if state.status in FINAL_STATUSES and final_since is None:
            final_since = time.monotonic()
        # A container its backend failed to stop never reports terminated: stop following after a while.
        settled = final_since is not None and time.monotonic() - final_since > DEFAULT_LOG_SETTLE_SECONDS
        ended = state.status in FINAL_STATUSES and (state.terminated or settled)
        if state.executions or execution_id is not None:
            target = reading or state.executions[-1].execution_id
            chunk = await read_logs(client, settings, state, target, offset)
            offset, reading = chunk.offset, target
            if chunk.text:
                yield chunk.text
                continue  # there may be more right away
            latest = state.executions[-1].execution_id if state.executions else None
            if execution_id is None and latest is not None and latest != reading:
                reading, offset = latest, None  # a retry started: its output, from its beginning
                continue
        if not follow or ended:
            return
        await asyncio.sleep(poll_seconds)
