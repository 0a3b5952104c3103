"""Waiting for capacity while provisioning: backoff, the deadline, and telling the workflow.

A cloud backend may have no room for a container now (Fargate's "Capacity is unavailable", an account's
vCPU quota, throttled RunTask calls). That is not a failure of the invocation: the provision activity
waits and starts again, with backoff, for ``MULTINODE_CAPACITY_WAIT_SECONDS``, and tells the workflow,
which shows the invocation as PENDING meanwhile. The wait survives a control-plane worker's death: its
start and the number of starts so far travel in the activity's heartbeat details to the retry on
another worker. Only once the wait is over does the attempt fail, with what limit was hit and how to
raise it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from multinode._protocol import PROVISIONING_SIGNAL, ProvisioningWait
from multinode._vocabulary import ErrorType
from multinode.provisioner import CapacityUnavailableError

CAPACITY_BACKOFF_INITIAL_SECONDS = 5.0
"""First wait after a capacity error; doubles with each further one."""
CAPACITY_BACKOFF_MAX_SECONDS = 120.0
"""Longest wait between two starts while there is no capacity."""
HEARTBEAT_SECONDS = 5.0
"""How often a waiting provision activity heartbeats (the workflow gives it 15 s)."""


@dataclass
class CapacityWait:
    """One provision activity's wait for capacity, resumed from the previous attempt's heartbeat."""

    wait_seconds: float
    start_attempt: int = 0
    """Starts that failed for lack of capacity so far (each next start is a new container)."""
    waiting_since: datetime | None = None
    errors: int = 0

    @classmethod
    def resume(cls, wait_seconds: float) -> CapacityWait:
        wait = cls(wait_seconds)
        details = activity.info().heartbeat_details
        if details and isinstance(details[0], dict):
            wait.start_attempt = int(details[0].get("start_attempt") or 0)
            since = details[0].get("waiting_since")
            wait.waiting_since = datetime.fromisoformat(since) if since else None
        return wait

    def details(self) -> list[dict[str, Any]]:
        """Heartbeat details: what a retry on another worker resumes from."""
        since = self.waiting_since.isoformat() if self.waiting_since else None
        return [{"start_attempt": self.start_attempt, "waiting_since": since}]

    def heartbeat(self) -> None:
        if activity.info().is_local:
            return  # a local activity has no heartbeat (and no other worker to resume on)
        activity.heartbeat(*self.details())

    def waited(self) -> float:
        if self.waiting_since is None:
            return 0.0
        return (datetime.now(timezone.utc) - self.waiting_since).total_seconds()

    def start_waiting(self) -> None:
        """The wait's clock starts (at the first capacity, quota or transient error)."""
        if self.waiting_since is None:
            self.waiting_since = datetime.now(timezone.utc)

    async def note(
        self, error: CapacityUnavailableError, client: Client, invocation_id: str, execution_id: str
    ) -> None:
        """Count a wait: the clock starts, and the workflow hears why (the first time, then every 10th)."""
        self.start_waiting()
        self.errors += 1
        if self.errors % 10 == 1:
            activity.logger.info("No capacity for execution %s yet: %s", execution_id, error)
            await _tell_workflow(client, invocation_id, execution_id, str(error))

    async def wait_or_fail(
        self, error: CapacityUnavailableError, client: Client, invocation_id: str, execution_id: str
    ) -> None:
        """Sleep (heartbeating) before the next start; fail the attempt for good once the wait is over."""
        self.start_waiting()
        if self.waited() >= self.wait_seconds:
            raise give_up(error, self.wait_seconds) from error
        await self.note(error, client, invocation_id, execution_id)
        delay = min(CAPACITY_BACKOFF_INITIAL_SECONDS * 2 ** (self.errors - 1), CAPACITY_BACKOFF_MAX_SECONDS)
        delay = min(delay, max(0.0, self.wait_seconds - self.waited()) + 0.1)
        await self.sleep(delay)

    async def sleep(self, seconds: float) -> None:
        """Sleep while heartbeating (a cancellation of the activity arrives with a heartbeat's answer)."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (left := end - loop.time()) > 0:
            self.heartbeat()
            await asyncio.sleep(min(left, HEARTBEAT_SECONDS))


def give_up(error: CapacityUnavailableError, wait_seconds: float) -> ApplicationError:
    parts = [f"No capacity to start the container within {wait_seconds:g} s (MULTINODE_CAPACITY_WAIT_SECONDS): {error}"]
    if error.limit:
        parts.append(f"The limit: {error.limit}")
    if error.remedy:
        parts.append(f"To raise it: {error.remedy}")
    return ApplicationError(
        " ".join(p if p.endswith(".") else p + "." for p in parts),
        type=ErrorType.CAPACITY_UNAVAILABLE,
        non_retryable=True,
    )


async def _tell_workflow(client: Client, invocation_id: str, execution_id: str, message: str) -> None:
    """Best effort: the invocation shows PENDING with why; the wait goes on if the signal is lost."""
    try:
        await client.get_workflow_handle(invocation_id).signal(
            PROVISIONING_SIGNAL, ProvisioningWait(execution_id=execution_id, reason=message[:2000])
        )
    except Exception as exc:  # noqa: BLE001 - the workflow may be closing; the wait does not depend on it
        activity.logger.info("could not tell invocation %s about the wait: %s", invocation_id, exc)
