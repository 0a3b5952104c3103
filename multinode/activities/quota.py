"""Control-plane activities of the concurrency quotas (see docs/architecture.md, "Concurrency quotas"):
queue an invocation at its function's quota, deliver grants, give slots back, find holders that ended."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from multinode._protocol import (
    FIND_CLOSED_ACTIVITY,
    GRANT_SLOTS_ACTIVITY,
    RELEASE_SIGNAL,
    RELEASE_SLOT_ACTIVITY,
    REQUEST_SLOT_ACTIVITY,
    SLOT_GRANTED_SIGNAL,
    GrantSlotsInput,
    ReleaseSlotInput,
    RequestSlotInput,
)
from multinode._slots import queue_at_quota

TRANSIENT_RPC_CODES = frozenset(
    {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED}
)
"""RPC failures worth retrying a batch of grants for."""


class QuotaActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name=REQUEST_SLOT_ACTIVITY)
    async def request_slot(self, request: RequestSlotInput) -> None:
        """Ask the function's quota workflow for a slot, starting it if it is not running. (No query
        first: a deep queue's checks would fill the quota's query buffer, and a query from a local
        activity waits on the workflow-task slots its own workflow task holds.)"""
        await queue_at_quota(self._client, request.quota_id, activity.info().task_queue, [request.request])

    @activity.defn(name=GRANT_SLOTS_ACTIVITY)
    async def grant_slots(self, request: GrantSlotsInput) -> list[str]:
        """Tell each invocation it holds a slot; return those that have ended (their slot is free).

        Signals sent by the client, not by the quota workflow: a workflow's signal to another costs a
        confirmation event and a workflow task in the quota for each, which the server delivers at about
        ten a second under load; these cost the quota one local activity per batch."""

        async def grant(invocation_id: str) -> None:
            await self._client.get_workflow_handle(invocation_id).signal(SLOT_GRANTED_SIGNAL, request.granted_at)

        outcomes = await asyncio.gather(*(grant(i) for i in request.invocation_ids), return_exceptions=True)
        ended = []
        for invocation_id, outcome in zip(request.invocation_ids, outcomes, strict=True):
            if isinstance(outcome, RPCError) and outcome.status in TRANSIENT_RPC_CODES:
                raise outcome  # the whole batch again (a grant signalled twice is harmless)
            if isinstance(outcome, BaseException):
                # Ended meanwhile (NOT_FOUND), or it cannot take the grant for good: either way the
                # slot goes back rather than blocking the quota on one invocation.
                activity.logger.info("slot for %s not delivered: %s", invocation_id, outcome)
                ended.append(invocation_id)
        return ended

    @activity.defn(name=FIND_CLOSED_ACTIVITY)
    async def find_closed_invocations(self, invocation_ids: list[str]) -> list[str]:
        """The invocations among these whose workflow is no longer running."""

        async def closed(invocation_id: str) -> bool:
            try:
                description = await self._client.get_workflow_handle(invocation_id).describe()
            except RPCError as exc:
                if exc.status == RPCStatusCode.NOT_FOUND:
                    return True
                raise
            return description.status != WorkflowExecutionStatus.RUNNING

        flags = await asyncio.gather(*(closed(i) for i in invocation_ids))
        return [i for i, is_closed in zip(invocation_ids, flags, strict=True) if is_closed]

    @activity.defn(name=RELEASE_SLOT_ACTIVITY)
    async def release_slot(self, request: ReleaseSlotInput) -> None:
        """Give an invocation's slot back (or withdraw its request); a quota that is gone holds nothing."""
        try:
            await self._client.get_workflow_handle(request.quota_id).signal(RELEASE_SIGNAL, request.invocation_id)
        except RPCError as exc:
            if exc.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
                raise

    def all(self) -> list[Callable[..., Any]]:
        return [self.request_slot, self.grant_slots, self.release_slot, self.find_closed_invocations]
