"""A function's concurrency quota: one long-running workflow per (project, function).

Temporal has no global cap on running workflows or activities of one kind (a worker's limits count
one process; task-queue rate limits count starts per second), so a durable slot holder grants slots:
invocations ask with the ``acquire`` signal (sent with signal-with-start by the SDK right after it starts
the invocation, and again by the invocation itself if no grant comes), are granted with ``slot_granted``
(which carries the grant time), and give back with ``release``. Waiting invocations are served in the
order their first request arrived: an invocation whose ``.start`` returned before another's began is
always served first (``.map`` sends its requests in input order, in one signal per chunk).
Each request carries the invocation's own ``max_concurrency``, so a quota changed by a new version
applies to invocations started after it. A holder that ends without releasing (terminated, or its
workflow failed) is found by a periodic check while others wait.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from multinode._protocol import (
        ACQUIRE_MANY_SIGNAL,
        ACQUIRE_SIGNAL,
        DESCRIBE_QUERY,
        FIND_CLOSED_ACTIVITY,
        GRANT_SLOTS_ACTIVITY,
        QUOTA_WORKFLOW,
        RELEASE_SIGNAL,
        SLOT_GRANTED_SIGNAL,
        GrantSlotsInput,
        QuotaState,
        SlotRequest,
    )

RECONCILE_INTERVAL = timedelta(seconds=15)
"""While invocations wait, how often holders are checked for having ended without releasing."""
HISTORY_EVENTS_BEFORE_CONTINUE_AS_NEW = 5_000
"""The quota restarts itself with its state once its history is this long."""
IDLE_BEFORE_EXIT = timedelta(minutes=10)
"""A quota with no holder and no waiter for this long completes (the next request starts it again)."""
ARRIVAL_ORDER_PATCH = "multinode-quota-arrival-order"
"""Quota runs from before this patch sorted waiters by start time and sent grants without a time."""
GRANT_TOGETHER_PATCH = "multinode-quota-grants-together"
"""Quota runs from before this patch signalled one grant per workflow task, each awaited before the next;
since, every free slot is granted at once by one local activity."""
GRANT_TIMEOUT = timedelta(minutes=1)
"""One attempt at delivering a batch of grants (retried until it succeeds)."""


@workflow.defn(name=QUOTA_WORKFLOW, sandboxed=False)
class QuotaWorkflow:
    @workflow.init
    def __init__(self, state: QuotaState) -> None:
        self._state = state
        self._changed = True

    @workflow.query(name=DESCRIBE_QUERY)
    def describe(self) -> QuotaState:
        return self._state

    @workflow.signal(name=ACQUIRE_SIGNAL)
    def acquire(self, request: SlotRequest) -> None:
        self.acquire_many([request])

    @workflow.signal(name=ACQUIRE_MANY_SIGNAL)
    def acquire_many(self, requests: list[SlotRequest]) -> None:
        """Queue each request not already queued or holding, in the order given."""
        known = set(self._state.holders) | {w.invocation_id for w in self._state.waiting}
        for request in requests:
            if request.invocation_id not in known:
                known.add(request.invocation_id)
                self._state.waiting.append(request)
                self._changed = True

    @workflow.signal(name=RELEASE_SIGNAL)
    def release(self, invocation_id: str) -> None:
        if invocation_id in self._state.holders:
            self._state.holders.remove(invocation_id)
        self._state.waiting = [w for w in self._state.waiting if w.invocation_id != invocation_id]
        self._changed = True

    @workflow.run
    async def run(self, state: QuotaState) -> None:
        next_check = workflow.now() + RECONCILE_INTERVAL
        while True:
            await self._grant()
            self._changed = False
            idle = not self._state.holders and not self._state.waiting
            if self._state.waiting and workflow.now() >= next_check:
                # On a deadline that signals do not push back: under steady traffic the wait below
                # never times out, and a leaked slot would shrink the quota for good.
                await self._forget_closed_holders()
                next_check = workflow.now() + RECONCILE_INTERVAL
                continue
            if idle:
                timeout: timedelta | None = IDLE_BEFORE_EXIT
            elif self._state.waiting:
                timeout = max(next_check - workflow.now(), timedelta(seconds=1))
            else:
                timeout = None
            try:
                await workflow.wait_condition(lambda: self._changed, timeout=timeout)
            except asyncio.TimeoutError:
                if idle:
                    await workflow.wait_condition(workflow.all_handlers_finished)
                    if not self._state.holders and not self._state.waiting:
                        return
            if workflow.info().get_current_history_length() > HISTORY_EVENTS_BEFORE_CONTINUE_AS_NEW:
                await workflow.wait_condition(workflow.all_handlers_finished)
                workflow.continue_as_new(self._state)

    async def _grant(self) -> None:
        if not workflow.patched(ARRIVAL_ORDER_PATCH):
            await self._grant_sorted_one_by_one()
            return
        if workflow.patched(GRANT_TOGETHER_PATCH):
            await self._grant_together()
            return
        while self._state.waiting and len(self._state.holders) < self._state.waiting[0].max_concurrency:
            invocation_id = self._state.waiting.pop(0).invocation_id
            self._state.holders.append(invocation_id)
            await self._send_grant(invocation_id, workflow.now().isoformat())

    async def _grant_together(self) -> None:
        """Every free slot at once, in arrival order, delivered by one local activity. (Signalling each
        grant from this workflow, as before this patch, capped a function at about ten starts a second
        on a busy machine: the server delivers workflow-to-workflow signals one by one, each with a
        confirmation event and a workflow task here.)"""
        while True:  # until nothing more can be granted: releases may arrive during a delivery
            granted = []
            while self._state.waiting and len(self._state.holders) < self._state.waiting[0].max_concurrency:
                invocation_id = self._state.waiting.pop(0).invocation_id
                self._state.holders.append(invocation_id)
                granted.append(invocation_id)
            if not granted:
                return
            ended = await workflow.execute_local_activity(
                GRANT_SLOTS_ACTIVITY,
                GrantSlotsInput(invocation_ids=granted, granted_at=workflow.now().isoformat()),
                result_type=list[str],
                start_to_close_timeout=GRANT_TIMEOUT,
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=30)),
            )
            for invocation_id in ended:  # their slot is free again
                self.release(invocation_id)

    async def _send_grant(self, invocation_id: str, granted_at: str) -> None:
        try:
            await workflow.get_external_workflow_handle(invocation_id).signal(SLOT_GRANTED_SIGNAL, granted_at)
        except Exception:  # the invocation ended meanwhile: its slot is free again
            self.release(invocation_id)

    async def _grant_sorted_one_by_one(self) -> None:
        """The rule of quota runs started before ARRIVAL_ORDER_PATCH (kept so their histories replay):
        those kept ``waiting`` sorted on every request, including requests that arrive during a grant."""
        while self._state.waiting:
            self._state.waiting.sort(key=lambda r: (r.created_at, r.invocation_id))
            if len(self._state.holders) >= self._state.waiting[0].max_concurrency:
                break
            request = self._state.waiting.pop(0)
            self._state.holders.append(request.invocation_id)
            try:
                await workflow.get_external_workflow_handle(request.invocation_id).signal(SLOT_GRANTED_SIGNAL)
            except Exception:  # the invocation ended meanwhile: its slot is free again
                self.release(request.invocation_id)

    async def _forget_closed_holders(self) -> None:
        try:
            closed = await workflow.execute_activity(
                FIND_CLOSED_ACTIVITY,
                list(self._state.holders),
                result_type=list[str],
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=RetryPolicy(maximum_attempts=3),
            )
        except ActivityError as err:  # try again at the next check; never fail the quota itself
            workflow.logger.warning("checking the holders of %s failed: %s", self._state.quota_id, err)
            return
        for invocation_id in closed:
            self.release(invocation_id)
