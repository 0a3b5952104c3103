"""Queueing invocations at their function's quota workflow (shared by the SDK and the control plane)."""

from __future__ import annotations

from collections.abc import Sequence

from temporalio.client import Client

from multinode._protocol import ACQUIRE_MANY_SIGNAL, ACQUIRE_SIGNAL, QUOTA_WORKFLOW, QuotaState, SlotRequest

SLOT_REQUESTS_PER_SIGNAL = 500
"""Slot requests sent to a quota in one signal (keeps the signal far below payload limits)."""


async def queue_at_quota(client: Client, quota_id: str, task_queue: str, requests: Sequence[SlotRequest]) -> None:
    """Queue the requests, in this order, starting the quota workflow if it is not running.

    One request goes as ``acquire`` (which control-plane workers of every version understand), several
    as ``acquire_many`` in chunks.
    """
    for first in range(0, len(requests), SLOT_REQUESTS_PER_SIGNAL):
        chunk = list(requests[first : first + SLOT_REQUESTS_PER_SIGNAL])
        await client.start_workflow(
            QUOTA_WORKFLOW,
            QuotaState(quota_id=quota_id),
            id=quota_id,
            task_queue=task_queue,
            start_signal=ACQUIRE_SIGNAL if len(chunk) == 1 else ACQUIRE_MANY_SIGNAL,
            start_signal_args=[chunk[0] if len(chunk) == 1 else chunk],
        )
