"""What the steps of an invocation's attempt share: their timeouts and patches, how an attempt ends.

The invocation workflow (``invocation.py``) runs each attempt as provisioning (``_provisioning.py``),
the run in the container (``_container_run.py``) and clean-up; these modules only split it by concern.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from multinode._protocol import ErrorInfo
    from multinode._vocabulary import ErrorType, InvocationStatus

CONTAINER_START_TIMEOUT = timedelta(minutes=10)
"""How long a provisioned container may take to start polling for its execution."""
RUN_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
"""A container that sends no heartbeat for this long is considered lost. Long, because user code in a C
call that holds the GIL stops heartbeats; a container that dies is noticed at once by the watch."""
EXIT_RESOLUTION_WAIT = timedelta(seconds=5)
"""After a container exits, how long to wait for its run activity's own completion to arrive."""
WATCH_END_WAIT = timedelta(seconds=10)
"""After deprovisioning, how long to wait for the watch activity to see the container gone."""
PROVISION_TIMEOUT = timedelta(minutes=2)
"""One attempt at starting a container (a local activity: it holds the workflow task meanwhile)."""
PROVISION_HEARTBEAT_TIMEOUT = timedelta(seconds=15)
"""A remote provision activity that sends no heartbeat for this long (its worker died) is retried on
another worker, which adopts what it started. It heartbeats every 5 s while it waits for capacity, for
ECS or for a thread; a cancel reaches it with a heartbeat's answer, within 80% of this."""
DEPROVISION_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
"""The same for clean-up, which heartbeats while it waits for the container to be gone."""
PROVISION_ACTIVITY_TIMEOUT = timedelta(hours=24)
"""Backstop for one remote provision activity; it ends far sooner, at ``MULTINODE_CAPACITY_WAIT_SECONDS``
(at most 20 h) when there is no capacity."""
CAPACITY_WAIT_PATCH = "multinode-capacity-wait"
"""Remote provisioning heartbeats, may wait for capacity (PENDING meanwhile) and is cancellable; before,
it ran up to 10 minutes per attempt, shielded from cancellation."""
REATTACH_PATCH = "multinode-reattach"
"""A run activity that timed out on heartbeats while its container still runs is scheduled again (the
container answers with the same call's outcome) instead of failing the attempt."""

FOREVER = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30))
"""Retry until it works (clean-up, slot requests): what it does is idempotent and must happen."""


class AttemptEnd(Exception):
    """How an attempt ended other than by success."""

    def __init__(self, status: InvocationStatus, error: ErrorInfo | None = None) -> None:
        super().__init__(status)
        self.status = status
        self.error = error


async def settle(futures: list[Any], timeout: timedelta) -> None:
    try:
        await workflow.wait_condition(lambda: any(f.done() for f in futures), timeout=timeout)
    except asyncio.TimeoutError:
        pass


def error_from(err: BaseException, default_type: ErrorType) -> ErrorInfo:
    cause = err.cause if isinstance(err, ActivityError) and err.cause is not None else err
    if isinstance(cause, ApplicationError):
        details = cause.details
        traceback = details[0] if details and isinstance(details[0], str) else None
        return ErrorInfo(type=cause.type or default_type, message=cause.message, traceback=traceback)
    return ErrorInfo(type=default_type, message=str(cause))
