"""Control-plane activity that cancels an invocation's nested invocations when it is cancelled."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from multinode._protocol import CANCEL_INVOCATIONS_ACTIVITY


class ChildrenActivities:
    def __init__(self, client: Client) -> None:
        self._client = client

    @activity.defn(name=CANCEL_INVOCATIONS_ACTIVITY)
    async def cancel_invocations(self, invocation_ids: list[str]) -> None:
        """Request cancellation of nested invocations; those already finished are skipped."""

        async def cancel(invocation_id: str) -> None:
            try:
                await self._client.get_workflow_handle(invocation_id).cancel()
            except RPCError as exc:
                if exc.status != RPCStatusCode.NOT_FOUND:
                    raise

        await asyncio.gather(*(cancel(i) for i in invocation_ids))

    def all(self) -> list[Callable[..., Any]]:
        return [self.cancel_invocations]
