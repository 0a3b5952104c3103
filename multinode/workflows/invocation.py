"""The invocation workflow: one per invocation, id = invocation id.

Per attempt: provision a container (control-plane activity), run the user function as an activity on
the container's own task queue, watch the container so that its death is noticed at once, and always
deprovision. Retries are attempts of this whole sequence, not Temporal activity retries, because a
retry must get a fresh container.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import SearchAttributeKey
from temporalio.exceptions import (
    ActivityError,
    ApplicationError,
    TimeoutError,
    is_cancelled_exception,
)

with workflow.unsafe.imports_passed_through():
    from multinode._protocol import (
        CANCEL_INVOCATIONS_ACTIVITY,
        CHILD_STARTED_SIGNAL,
        DESCRIBE_QUERY,
        INVOCATION_WORKFLOW,
        PROGRESS_QUERY,
        PROGRESS_SIGNAL,
        PROVISIONING_SIGNAL,
        RELEASE_SIGNAL,
        RELEASE_SLOT_ACTIVITY,
        REQUEST_SLOT_ACTIVITY,
        SA_STATUS,
        SLOT_GRANTED_SIGNAL,
        ContainerExit,
        ContainerHandle,
        ErrorInfo,
        ExecutionState,
        InvocationInput,
        InvocationState,
        ProgressUpdate,
        ProvisioningWait,
        ReleaseSlotInput,
        RequestSlotInput,
        SlotRequest,
        quota_workflow_id,
    )
    from multinode._vocabulary import ErrorType, InvocationStatus
    from multinode.workflows._attempt import FOREVER, WATCH_END_WAIT, AttemptEnd, error_from, settle
    from multinode.workflows._container_run import ContainerRun
    from multinode.workflows._provisioning import ProvisioningSteps

CHILDREN_PER_CANCELLATION = 500
"""Nested invocations cancelled by one activity (keeps its input far below the payload limit)."""
SLOT_REQUEST_REPEAT = timedelta(minutes=5)
"""While waiting for a concurrency slot, how often the request is sent again."""
SLOT_REQUEST_FALLBACK = timedelta(seconds=30)
"""When the starter asked for the slot itself: how long to wait for a grant before asking too (in case
the starter died between starting the workflow and asking). Every invocation queued longer than this
asks once (a no-op for the quota, which knows it), so it is long enough to spare a deep queue a burst."""
PRE_LEAN_SLOT_REQUEST_FALLBACK = timedelta(seconds=10)
"""The same for invocations started before LEAN_PATH_PATCH."""
PROGRESS_SIGNAL_BUDGET = 4_000
"""Progress signals one invocation may receive over all its attempts (each costs ~4 history events)."""
PROGRESS_BYTES_BUDGET = 16 * 1024 * 1024
"""Bytes of progress one invocation may receive over all its attempts (history is capped at 50 MB)."""
RETRY_BACKOFF_INITIAL = timedelta(seconds=1)
"""Wait before the second attempt; doubles for each further attempt."""
RETRY_BACKOFF_MAX = timedelta(minutes=1)
"""Longest wait between two attempts."""
LEAN_PATH_PATCH = "multinode-lean-path"
"""Invocations started before this patch provisioned and deprovisioned with remote activities, published
their final status only after clean-up, and released their slot with a signal from the workflow."""

_STATUS_KEY = SearchAttributeKey.for_keyword(SA_STATUS)
_T = TypeVar("_T")


@workflow.defn(name=INVOCATION_WORKFLOW, sandboxed=False)
class InvocationWorkflow(ProvisioningSteps, ContainerRun):
    @workflow.init
    def __init__(self, input: InvocationInput) -> None:
        info = workflow.info()
        self._input = input
        self._cancel_requested = False
        self._watch: workflow.ActivityHandle[ContainerExit] | None = None
        self._slot_granted = False
        self._granted_at: datetime | None = None
        self._quota_id = quota_workflow_id(input.project_name, input.function_name)
        self._children: list[str] = []
        self._children_cancelled = 0
        self._child_cancellations: list[workflow.ActivityHandle[None]] = []
        self._state = InvocationState(
            invocation_id=info.workflow_id,
            project_name=input.project_name,
            version_id=input.version_id,
            function_name=input.function_name,
            status=InvocationStatus.PENDING,
            created_at=info.start_time,
            parent_invocation_id=input.parent_invocation_id,
            provisioner=input.provisioner,
        )
        self._current_execution: str | None = None
        self._provisioning: ExecutionState | None = None
        self._progress_signals_used = 0
        self._progress_bytes_used = 0
        self._lean = False
        self._finished = False
        self._released = False

    @workflow.query(name=DESCRIBE_QUERY)
    def describe(self) -> InvocationState:
        return self._state

    @workflow.query(name=PROGRESS_QUERY)
    def progress(self) -> Any:
        """The latest yielded value (jsonpickle JSON) as of the last progress signal."""
        return self._state.result

    @workflow.signal(name=PROGRESS_SIGNAL)
    def progress_update(self, update: ProgressUpdate) -> None:
        # Progress reaches the workflow by signals paced by the container within a budget, so that
        # even a function yielding once a second for 24 h, retried, stays far below Temporal's history
        # limits (51,200 events, 50 MB). `.get()` reads fresher progress from the run activity's
        # heartbeat details, which cost no history but which a workflow cannot read.
        if update.execution_id != self._current_execution:
            return  # a late signal from an attempt that already ended
        self._progress_signals_used += 1
        self._progress_bytes_used += len(json.dumps(update.value))
        self._state.result = update.value
        self._show_details()

    @workflow.signal(name=PROVISIONING_SIGNAL)
    def provisioning_wait(self, wait: ProvisioningWait) -> None:
        """The provision activity waits for capacity: the invocation is PENDING until it has a container."""
        execution = self._provisioning
        if execution is None or execution.execution_id != wait.execution_id or self._cancel_requested:
            return  # late, or a cancel is on its way
        execution.waiting_for_capacity = wait.reason
        execution.status = InvocationStatus.PENDING
        self._set_status(InvocationStatus.PENDING)
        self._show_details()

    @workflow.signal(name=SLOT_GRANTED_SIGNAL)
    def slot_granted(self, granted_at: str | None = None) -> None:
        """``granted_at``: the quota's clock at the grant (absent from quotas older than that field)."""
        self._slot_granted = True
        if granted_at is not None and self._granted_at is None:
            self._granted_at = datetime.fromisoformat(granted_at)

    @workflow.signal(name=CHILD_STARTED_SIGNAL)
    def child_started(self, child_invocation_id: str) -> None:
        """Sent by the SDK when code of this invocation starts another (nested) invocation."""
        self._children.append(child_invocation_id)
        if self._cancel_requested:
            self._start_cancelling_children()

    def _start_cancelling_children(self) -> None:
        """Cancel every child started so far (each cancels its own children in turn)."""
        pending = self._children[self._children_cancelled :]
        self._children_cancelled = len(self._children)
        for start in range(0, len(pending), CHILDREN_PER_CANCELLATION):
            self._child_cancellations.append(
                workflow.start_activity(
                    CANCEL_INVOCATIONS_ACTIVITY,
                    pending[start : start + CHILDREN_PER_CANCELLATION],
                    start_to_close_timeout=timedelta(minutes=1),
                    retry_policy=FOREVER,
                )
            )

    @workflow.run
    async def run(self, input: InvocationInput) -> InvocationState:
        # The lean path: provisioning and clean-up are local activities (no extra workflow task each),
        # the outcome is published as soon as the user code has returned (clean-up follows), and the slot
        # goes back by a local activity instead of a signal that needs one more workflow task.
        self._lean = workflow.patched(LEAN_PATH_PATCH)
        max_attempts = input.config.max_retries + 1
        self._show_details()
        status, error = InvocationStatus.CANCELLED, None
        try:
            await self._acquire_slot()
            for attempt in range(1, max_attempts + 1):
                execution = await self._run_attempt(attempt, last=attempt == max_attempts)
                status, error = InvocationStatus(execution.status), execution.error
                if status == InvocationStatus.FAILED and not self._lean:
                    self._state.num_failed_attempts += 1
                if status != InvocationStatus.FAILED or self._cancel_requested:
                    break
                if attempt < max_attempts:
                    self._set_status(InvocationStatus.PENDING)
                    await workflow.sleep(_backoff(attempt))
        except asyncio.CancelledError:
            status, error = InvocationStatus.CANCELLED, None  # cancelled while no container existed
        except ActivityError as err:
            if not is_cancelled_exception(err):
                raise
            status, error = InvocationStatus.CANCELLED, None  # cancelled while asking for a slot
        self._finish(status, error)  # before the slot is released: never more RUNNING than the quota
        self._state.terminated = all(e.terminated for e in self._state.executions)
        if not self._released:
            await self._release_slot()
        if self._child_cancellations:
            children = asyncio.gather(*self._child_cancellations)
            await (self._uncancellable(children) if self._lean else children)
        return self._state

    def _finish(self, status: str, error: ErrorInfo | None) -> None:
        """Publish how the invocation ended; the first call wins (a later cancel changes nothing)."""
        if self._finished:
            return
        self._finished = True
        if self._cancel_requested and status == InvocationStatus.FAILED:
            status, error = InvocationStatus.CANCELLED, None  # a cancel absorbed while (de)provisioning
        if status in (InvocationStatus.CANCELLED, InvocationStatus.TIMED_OUT):
            self._cancel_requested = True
            self._start_cancelling_children()
        self._state.error = error
        self._state.finished_at = workflow.now()
        self._set_status(status)

    # --- concurrency slot ---------------------------------------------------------------------

    async def _acquire_slot(self) -> None:
        """Wait (PENDING) for one of the function's ``max_concurrency`` slots; held across retries.

        The request is repeated now and then (it is idempotent): a quota workflow that lost its state
        (terminated by hand, say) learns of the waiting invocation again. When the starter sent the
        first request itself, the workflow's own is only a fallback.
        """
        if self._lean:
            # Let a cancel that came with the grant (in one workflow task) win over provisioning.
            await asyncio.sleep(0)
        if self._input.slot_requested and not self._slot_granted:
            fallback = SLOT_REQUEST_FALLBACK if self._lean else PRE_LEAN_SLOT_REQUEST_FALLBACK
            try:
                await workflow.wait_condition(lambda: self._slot_granted, timeout=fallback)
            except asyncio.TimeoutError:
                pass
        while not self._slot_granted:
            request = RequestSlotInput(
                quota_id=self._quota_id,
                request=SlotRequest(
                    invocation_id=self._state.invocation_id,
                    created_at=self._state.created_at.isoformat(),
                    max_concurrency=self._input.config.max_concurrency,
                ),
            )
            # A remote activity, not a local one: it must not hold a workflow-task slot of this worker
            # while the quota, which needs one, is busy (a deep queue's requests come due together).
            await workflow.execute_activity(
                REQUEST_SLOT_ACTIVITY, request, start_to_close_timeout=timedelta(seconds=30), retry_policy=FOREVER
            )
            try:
                await workflow.wait_condition(lambda: self._slot_granted, timeout=SLOT_REQUEST_REPEAT)
            except asyncio.TimeoutError:
                pass

    async def _release_slot(self) -> None:
        """Give the slot back, or withdraw from the queue; both are no-ops if neither holds."""
        self._released = True
        if self._lean:
            await self._uncancellable(
                workflow.execute_local_activity(
                    RELEASE_SLOT_ACTIVITY,
                    ReleaseSlotInput(quota_id=self._quota_id, invocation_id=self._state.invocation_id),
                    start_to_close_timeout=timedelta(seconds=30),
                    retry_policy=FOREVER,
                )
            )
            return
        try:
            await workflow.get_external_workflow_handle(self._quota_id).signal(
                RELEASE_SIGNAL, self._state.invocation_id
            )
        except Exception:  # the quota workflow is gone, and with it any claim of ours
            workflow.logger.info("quota %s not reachable for release", self._quota_id)

    # --- one attempt --------------------------------------------------------------------------

    async def _run_attempt(self, attempt: int, *, last: bool) -> ExecutionState:
        info = workflow.info()
        execution = ExecutionState(f"{info.workflow_id}-{attempt}", attempt, InvocationStatus.RUNNING)
        self._state.executions.append(execution)
        self._set_status(InvocationStatus.RUNNING)
        execution.started_at = workflow.now()
        if self._state.started_at is None:
            # The grant time orders invocations exactly as the quota served them.
            self._state.started_at = self._granted_at or execution.started_at
        handle: ContainerHandle | None = None
        try:
            # Shielded: a cancellation during provisioning must still learn the handle to stop it.
            handle = await self._uncancellable(self._provision(execution))
            assert handle is not None
            execution.container_handle = handle.handle_id
            if self._cancel_requested:
                raise AttemptEnd(InvocationStatus.CANCELLED)
            self._current_execution = execution.execution_id
            output = await self._run_in_container(execution, handle)
            self._state.result = output.result
            execution.status = InvocationStatus.SUCCEEDED
        except AttemptEnd as end:
            execution.status, execution.error = end.status, end.error
        except (ActivityError, ApplicationError, TimeoutError) as err:
            # Provisioning failed for good (a local activity's error comes unwrapped).
            execution.status, execution.error = InvocationStatus.FAILED, error_from(err, ErrorType.PROVISIONER)
        except asyncio.CancelledError:
            execution.status = InvocationStatus.CANCELLED  # while waiting on a container that had stopped
            raise
        finally:
            self._current_execution = None
            execution.finished_at = workflow.now()
            if self._lean:
                if execution.status == InvocationStatus.FAILED:
                    self._state.num_failed_attempts += 1
                if execution.status != InvocationStatus.FAILED or last or self._cancel_requested:
                    self._finish(execution.status, execution.error)  # readable now; clean-up follows
            if handle is not None:
                await self._uncancellable(self._deprovision(handle))
            execution.terminated = True
            if self._lean and self._finished:
                # In the same workflow task as the clean-up, the container gone: the workflow task
                # that the watch's end brings then only closes the workflow.
                await self._release_slot()
            await self._end_watch()
        return execution

    async def _end_watch(self) -> None:
        """The container is gone, so the watch ends by itself within a poll; cancelling it instead
        would leave it to report to a closed workflow."""
        watch, self._watch = self._watch, None
        if watch is not None and not watch.done():
            await self._uncancellable(settle([watch], WATCH_END_WAIT))
            if not watch.done():
                watch.cancel()

    async def _uncancellable(self, awaitable: Awaitable[_T]) -> _T:
        """Await to the end even if the workflow is cancelled meanwhile; remember the request."""
        task: asyncio.Future[_T] = asyncio.ensure_future(awaitable)
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.cancelled():
                    raise
                if self._finished:
                    continue  # the outcome is published: a cancel that comes after it changes nothing
                self._cancel_requested = True
                self._set_status(InvocationStatus.CANCELLING)
                self._start_cancelling_children()

    def _progress_budget(self, attempt: int) -> dict[str, int]:
        """This attempt's share of what is left of the invocation's progress budget."""
        attempts_left = self._input.config.max_retries + 2 - attempt
        return {
            "progress_signal_budget": max(0, PROGRESS_SIGNAL_BUDGET - self._progress_signals_used) // attempts_left,
            "progress_bytes_budget": max(0, PROGRESS_BYTES_BUDGET - self._progress_bytes_used) // attempts_left,
        }

    def _set_status(self, status: str) -> None:
        if self._state.status != status:
            self._state.status = status
            workflow.upsert_search_attributes([_STATUS_KEY.value_set(status)])
            self._show_details()

    def _show_details(self) -> None:
        """What the Temporal Web UI shows as the workflow's current details."""
        lines = [f"**Multinode {self._state.status}** · {self._input.project_name}.{self._input.function_name}"]
        lines.append(f"version {self._input.version_id}, attempt {len(self._state.executions) or '-'}")
        if self._provisioning is not None and self._provisioning.waiting_for_capacity:
            lines.append(f"waiting for capacity: {self._provisioning.waiting_for_capacity[:1500]}")
        if self._state.result is not None:
            progress = json.dumps(self._state.result)
            lines.append(f"progress: `{progress if len(progress) < 1500 else progress[:1500] + '...'}`")
        workflow.set_current_details("\n\n".join(lines))


def _backoff(attempt: int) -> timedelta:
    seconds = RETRY_BACKOFF_INITIAL.total_seconds() * (2 ** (attempt - 1))
    return timedelta(seconds=min(seconds, RETRY_BACKOFF_MAX.total_seconds()))
