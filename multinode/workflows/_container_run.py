"""Running the function in an attempt's container, watching the container meanwhile: part of the
invocation workflow."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, CancelledError, TimeoutError, TimeoutType

with workflow.unsafe.imports_passed_through():
    from multinode._protocol import (
        INTERRUPT_ACTIVITY,
        RUN_FUNCTION_ACTIVITY,
        WATCH_ACTIVITY,
        ContainerExit,
        ContainerHandle,
        ErrorInfo,
        ExecutionState,
        InterruptInput,
        InvocationInput,
        RunInput,
        RunOutput,
        container_task_queue,
    )
    from multinode._vocabulary import ErrorType, InterruptReason, InvocationStatus
    from multinode.workflows._attempt import (
        CONTAINER_START_TIMEOUT,
        EXIT_RESOLUTION_WAIT,
        FOREVER,
        REATTACH_PATCH,
        RUN_HEARTBEAT_TIMEOUT,
        AttemptEnd,
        error_from,
        settle,
    )


class ContainerRun:
    """Mixin of ``InvocationWorkflow``: the attributes below are the workflow's."""

    _input: InvocationInput
    _cancel_requested: bool
    _watch: workflow.ActivityHandle[ContainerExit] | None

    _set_status: Callable[[str], None]
    _start_cancelling_children: Callable[[], None]
    _progress_budget: Callable[[int], dict[str, int]]

    async def _run_in_container(self, execution: ExecutionState, handle: ContainerHandle) -> RunOutput:
        grace = timedelta(seconds=handle.grace_period_seconds)
        queue = handle.task_queue or container_task_queue(execution.execution_id)
        run_input = RunInput(
            invocation_id=workflow.info().workflow_id,
            execution_id=execution.execution_id,
            function_name=self._input.function_name,
            args=self._input.args,
            timeout_seconds=self._input.config.timeout_seconds,
            grace_period_seconds=handle.grace_period_seconds,
            **self._progress_budget(execution.attempt),
        )
        # Backstop only: the container raises the timeout in user code itself at the deadline.
        deadline = workflow.now() + self._input.config.timeout + grace + timedelta(seconds=30)

        def start_run() -> workflow.ActivityHandle[RunOutput]:
            return workflow.start_activity(
                RUN_FUNCTION_ACTIVITY,
                run_input,
                result_type=RunOutput,
                task_queue=queue,
                schedule_to_start_timeout=CONTAINER_START_TIMEOUT,
                start_to_close_timeout=max(deadline - workflow.now(), CONTAINER_START_TIMEOUT),
                heartbeat_timeout=RUN_HEARTBEAT_TIMEOUT,
                retry_policy=RetryPolicy(maximum_attempts=1),
                cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            )

        run = start_run()
        watch = workflow.start_activity(
            WATCH_ACTIVITY,
            handle,
            result_type=ContainerExit,
            start_to_close_timeout=self._input.config.timeout + CONTAINER_START_TIMEOUT + grace * 2,
            # A watch whose control-plane worker died is retried on another one after this long (it
            # must outlast one status call to a throttled cloud API).
            heartbeat_timeout=timedelta(seconds=30),
            retry_policy=FOREVER,
        )
        self._watch = watch
        while True:
            output = await self._await_run(run, watch, queue, grace)
            if output is not None:
                break
            # Heartbeats stopped reaching Temporal, but the container is still there (Temporal or this
            # network was away): ask it for the run again; it answers with the same call's outcome.
            if not self._may_reattach(watch, deadline):
                message = f"The container stopped heartbeating for {RUN_HEARTBEAT_TIMEOUT}."
                raise AttemptEnd(InvocationStatus.FAILED, ErrorInfo(ErrorType.CONTAINER_LOST, message))
            run = start_run()
        if self._cancel_requested:
            raise AttemptEnd(InvocationStatus.CANCELLED)
        return output

    def _may_reattach(self, watch: workflow.ActivityHandle[ContainerExit], deadline: datetime) -> bool:
        if self._cancel_requested or watch.done() or workflow.now() >= deadline:
            return False
        return workflow.patched(REATTACH_PATCH)

    async def _await_run(
        self,
        run: workflow.ActivityHandle[RunOutput],
        watch: workflow.ActivityHandle[ContainerExit],
        queue: str,
        grace: timedelta,
    ) -> RunOutput | None:
        """The run's output; None if it ended by a heartbeat timeout (the container may still be there)."""
        try:
            await workflow.wait([run, watch], return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            self._cancel_requested = True
            self._set_status(InvocationStatus.CANCELLING)
            self._start_cancelling_children()
            run.cancel()
            # Faster than the run activity's next heartbeat: an activity on the container's own
            # queue raises the error in the user code at once.
            workflow.start_activity(
                INTERRUPT_ACTIVITY,
                InterruptInput(reason=InterruptReason.CANCELLED),
                task_queue=queue,
                schedule_to_close_timeout=timedelta(seconds=10),
                retry_policy=RetryPolicy(maximum_attempts=1),
            )
            await settle([run, watch], grace + timedelta(seconds=5))
            if not run.done():
                raise AttemptEnd(InvocationStatus.CANCELLED) from None  # grace period over: deprovision kills it
        if not run.done():
            # The container ended; its own report of the run may still be on its way.
            await settle([run], EXIT_RESOLUTION_WAIT)
        if not run.done():
            run.cancel()
            message = f"The container stopped: {watch.result().reason}"
            raise AttemptEnd(InvocationStatus.FAILED, ErrorInfo(ErrorType.CONTAINER_EXITED, message))
        try:
            return run.result()
        except (ActivityError, asyncio.CancelledError) as err:
            cause = err.cause if isinstance(err, ActivityError) else None
            if isinstance(cause, TimeoutError) and cause.type == TimeoutType.HEARTBEAT and not self._cancel_requested:
                return None
            raise self._classify(err) from None

    def _classify(self, err: BaseException) -> AttemptEnd:
        cause = err.cause if isinstance(err, ActivityError) else err
        if self._cancel_requested:
            return AttemptEnd(InvocationStatus.CANCELLED)
        if isinstance(cause, ApplicationError):
            if cause.type == ErrorType.INVOCATION_CANCELLED:
                return AttemptEnd(InvocationStatus.CANCELLED)
            if cause.type == ErrorType.INVOCATION_TIMED_OUT:
                return AttemptEnd(InvocationStatus.TIMED_OUT, error_from(err, ErrorType.INVOCATION_TIMED_OUT))
            return AttemptEnd(InvocationStatus.FAILED, error_from(err, ErrorType.ERROR))
        if isinstance(cause, (CancelledError, asyncio.CancelledError)):
            return AttemptEnd(InvocationStatus.CANCELLED)
        if isinstance(cause, TimeoutError):
            if cause.type == TimeoutType.START_TO_CLOSE:
                return AttemptEnd(
                    InvocationStatus.TIMED_OUT,
                    ErrorInfo(ErrorType.INVOCATION_TIMED_OUT, "The execution ran past its timeout and grace period."),
                )
            if cause.type == TimeoutType.SCHEDULE_TO_START:
                message = f"The container did not start within {CONTAINER_START_TIMEOUT}."
            else:
                message = f"The container stopped heartbeating for {RUN_HEARTBEAT_TIMEOUT}."
            return AttemptEnd(InvocationStatus.FAILED, ErrorInfo(ErrorType.CONTAINER_LOST, message))
        return AttemptEnd(InvocationStatus.FAILED, error_from(err, ErrorType.ERROR))
