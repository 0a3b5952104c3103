"""Provisioning an attempt's container, and cleaning it up: part of the invocation workflow.

The local backend provisions by local activity on the lean path (milliseconds; no extra workflow task);
a cloud backend by a heartbeating, cancellable activity that may wait long for capacity (the invocation
PENDING meanwhile; ``activities/_capacity.py``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from multinode._protocol import (
        DEPROVISION_ACTIVITY,
        PROVISION_ACTIVITY,
        ContainerHandle,
        ExecutionState,
        InvocationInput,
        InvocationState,
        ProvisionInput,
    )
    from multinode._vocabulary import WORKER_LOCAL_ERROR_TYPES, ErrorType, InvocationStatus
    from multinode.workflows._attempt import (
        CAPACITY_WAIT_PATCH,
        DEPROVISION_HEARTBEAT_TIMEOUT,
        FOREVER,
        PROVISION_ACTIVITY_TIMEOUT,
        PROVISION_HEARTBEAT_TIMEOUT,
        PROVISION_TIMEOUT,
        AttemptEnd,
    )


class ProvisioningSteps:
    """Mixin of ``InvocationWorkflow``: the attributes below are the workflow's."""

    _input: InvocationInput
    _state: InvocationState
    _lean: bool
    _cancel_requested: bool
    _provisioning: ExecutionState | None

    _set_status: Callable[[str], None]

    async def _provision(self, execution: ExecutionState) -> ContainerHandle:
        request = ProvisionInput.for_target(self._input.target, workflow.info().workflow_id, execution.execution_id)
        retry = RetryPolicy(maximum_attempts=5, non_retryable_error_types=[ErrorType.PROVISIONER])
        if self._local_activities():
            try:
                handle: ContainerHandle = await workflow.execute_local_activity(
                    PROVISION_ACTIVITY,
                    request,
                    result_type=ContainerHandle,
                    start_to_close_timeout=PROVISION_TIMEOUT,
                    schedule_to_close_timeout=timedelta(minutes=10),
                    retry_policy=RetryPolicy(
                        maximum_attempts=5, non_retryable_error_types=[ErrorType.PROVISIONER, *WORKER_LOCAL_ERROR_TYPES]
                    ),
                )
                return handle
            except (ActivityError, ApplicationError) as err:
                cause = err.cause if isinstance(err, ActivityError) else err
                if not (isinstance(cause, ApplicationError) and cause.type in WORKER_LOCAL_ERROR_TYPES):
                    raise
                # A local activity runs on this worker only: let any worker on the queue try.
        if workflow.patched(CAPACITY_WAIT_PATCH):
            return await self._provision_remote(request, execution)
        remote: ContainerHandle = await workflow.execute_activity(
            PROVISION_ACTIVITY,
            request,
            result_type=ContainerHandle,
            start_to_close_timeout=timedelta(minutes=10),
            retry_policy=retry,
        )
        return remote

    async def _provision_remote(self, request: ProvisionInput, execution: ExecutionState) -> ContainerHandle:
        """Provision by a heartbeating activity that may wait long for capacity; a cancel stops the wait
        (the activity stops a container it started but did not hand over)."""
        provision = workflow.start_activity(
            PROVISION_ACTIVITY,
            request,
            result_type=ContainerHandle,
            start_to_close_timeout=PROVISION_ACTIVITY_TIMEOUT,
            heartbeat_timeout=PROVISION_HEARTBEAT_TIMEOUT,
            retry_policy=RetryPolicy(
                initial_interval=timedelta(seconds=1),
                maximum_interval=timedelta(seconds=30),
                non_retryable_error_types=[ErrorType.PROVISIONER, ErrorType.CAPACITY_UNAVAILABLE],
            ),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        )
        self._provisioning = execution
        try:
            # Awaited under _uncancellable: a cancel sets _cancel_requested, which ends this wait.
            await workflow.wait_condition(lambda: provision.done() or self._cancel_requested)
            if not provision.done():
                provision.cancel()
            try:
                handle: ContainerHandle = await provision
                return handle
            except ActivityError as err:
                if self._cancel_requested and is_cancelled_exception(err):
                    raise AttemptEnd(InvocationStatus.CANCELLED) from None
                raise
        finally:
            self._provisioning = None
            if execution.waiting_for_capacity is not None:
                execution.waiting_for_capacity = None
                execution.status = InvocationStatus.RUNNING
                if self._state.status == InvocationStatus.PENDING:
                    self._set_status(InvocationStatus.RUNNING)

    def _local_activities(self) -> bool:
        """Whether provisioning runs as local activities: on the lean path, for the local provisioner
        only, whose calls take milliseconds. A local activity holds one of the worker's workflow-task
        slots while it runs, and a cloud backend's start or stop can take seconds to minutes."""
        return self._lean and self._input.provisioner == "local"

    def _deprovision(self, handle: ContainerHandle) -> Awaitable[None]:
        if self._local_activities():
            return workflow.execute_local_activity(
                DEPROVISION_ACTIVITY, handle, start_to_close_timeout=timedelta(minutes=5), retry_policy=FOREVER
            )
        return workflow.execute_activity(
            DEPROVISION_ACTIVITY,
            handle,
            start_to_close_timeout=timedelta(minutes=5),
            # It heartbeats while it waits for the container to be gone: a dead worker's clean-up is
            # taken over within this, not after the start-to-close.
            heartbeat_timeout=DEPROVISION_HEARTBEAT_TIMEOUT,
            retry_policy=FOREVER,
        )
