"""Progress sent by a container's agent to its invocation's workflow, within the execution's budget."""

from __future__ import annotations

import asyncio
import json
import sys
import time

from temporalio.client import Client

from multinode._protocol import PROGRESS_SIGNAL, ProgressUpdate, RunInput

MIN_PROGRESS_SIGNAL_INTERVAL_SECONDS = 1.0
"""Progress reaches the workflow (its ``progress`` query) at most this often."""


class ProgressPacer:
    """Sends the latest progress to the workflow as signals, within the execution's budget.

    The gap between two signals is at least ``MIN_PROGRESS_SIGNAL_INTERVAL_SECONDS`` and stretches
    so that, at the current payload size, the budget lasts until the execution's deadline.
    """

    def __init__(self, client: Client, run: RunInput) -> None:
        self._client = client
        self._run = run
        self._count_left = run.progress_signal_budget
        self._bytes_left = run.progress_bytes_budget
        self._deadline = time.monotonic() + run.timeout_seconds
        self._next_at = 0.0
        self._sent_version = 0
        self._task: asyncio.Task[None] | None = None

    def offer(self, progress: str | None, version: int) -> None:
        now = time.monotonic()
        if progress is None or version == self._sent_version or now < self._next_at:
            return
        if (self._task is not None and not self._task.done()) or self._count_left <= 0:
            return
        size = len(progress)
        if size > self._bytes_left:
            return
        try:
            value = json.loads(progress)
        except (ValueError, RecursionError):
            return  # not what the SDK sends
        self._sent_version = version
        self._count_left -= 1
        self._bytes_left -= size
        left = max(self._deadline - now, 0.0)
        self._next_at = now + max(
            MIN_PROGRESS_SIGNAL_INTERVAL_SECONDS,
            left / max(self._count_left, 1),
            left * size / max(self._bytes_left, 1),
        )
        update = ProgressUpdate(execution_id=self._run.execution_id, value=value)
        self._task = asyncio.create_task(self._send(update))

    async def _send(self, update: ProgressUpdate) -> None:
        try:
            await self._client.get_workflow_handle(self._run.invocation_id).signal(PROGRESS_SIGNAL, update)
        except Exception as exc:  # progress is best effort; the result is not
            print(f"[multinode] progress signal not sent: {exc}", file=sys.stderr, flush=True)
