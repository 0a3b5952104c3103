"""Control-plane activities around one container: provision, watch, deprovision (the quota's are in
``quota.py``, cancelling nested invocations in ``children.py``, reading logs in ``log_reads.py``).

The provisioner is synchronous (boto3 is); its calls run on the worker's bounded executor for blocking
calls (``_blocking.py``), heartbeating while they wait, so the worker's loop stays free; waits between
calls (for capacity, for a container to be gone) are on the loop, never in a thread.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from typing import Any

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCStatusCode

from multinode._protocol import (
    DEPROVISION_ACTIVITY,
    ENV_CONTAINER_TASK_QUEUE,
    ENV_EXECUTION_ID,
    ENV_FUNCTION,
    ENV_INVOCATION_ID,
    ENV_PROJECT,
    ENV_VERSION,
    PROVISION_ACTIVITY,
    WATCH_ACTIVITY,
    ContainerExit,
    ContainerHandle,
    ProvisionInput,
    container_task_queue,
)
from multinode._settings import MultinodeSettings
from multinode._vocabulary import ContainerState, ErrorType, is_resource_limit_exit
from multinode.activities._blocking import run_blocking, stop_until_gone
from multinode.activities._capacity import CapacityWait, give_up
from multinode.errors import ProvisionerError, VersionNotStoredError
from multinode.provisioner import CapacityUnavailableError, ContainerSpec, ContainerStatus, Provisioner

STARTING_IS_WAITING_SECONDS = 60.0
"""A container still looking for capacity after this long (Fargate: PROVISIONING) counts as waiting for
capacity: the invocation shows PENDING, and the wait's deadline applies."""
LOG_LINES_IN_EXIT_REASON = 8
"""Last lines of a container's output quoted when it stops unexpectedly."""
TRANSIENT_RPC_CODES = frozenset(
    {RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED}
)
"""RPC failures worth retrying a batch of grants for."""
NOTIFIED_WATCH_INTERVAL = 1.0
"""How often a watch whose backend notifies it of the container's exit still looks (and heartbeats)."""


class ProvisioningActivities:
    def __init__(self, client: Client, settings: MultinodeSettings, provisioners: dict[str, Provisioner]) -> None:
        self._client = client
        self._settings = settings
        self._provisioners = provisioners
        # Watches of this worker by container handle: deprovisioning wakes the container's watch at once
        # instead of leaving it to its next status poll (the workflow waits for the watch to end).
        self._watch_wakers: dict[str, asyncio.Event] = {}

    def _provisioner(self, name: str) -> Provisioner:
        return pick_provisioner(self._provisioners, name)

    @activity.defn(name=PROVISION_ACTIVITY)
    async def provision(self, request: ProvisionInput) -> ContainerHandle:
        provisioner = self._provisioner(request.provisioner)
        environment = {
            **self._settings.to_env(),
            ENV_EXECUTION_ID: request.execution_id,
            ENV_INVOCATION_ID: request.invocation_id,
            ENV_CONTAINER_TASK_QUEUE: container_task_queue(request.execution_id),
            ENV_PROJECT: request.project_name,
            ENV_VERSION: request.version_id,
            ENV_FUNCTION: request.function_name,
        }
        target = request.target
        wait = CapacityWait.resume(self._settings.capacity_wait_seconds)
        while True:
            spec = ContainerSpec(  # the backend's own terms: sizes, not Multinode's config
                execution_id=request.execution_id,
                invocation_id=request.invocation_id,
                project_name=target.project_name,
                version_id=target.version_id,
                function_name=target.function_name,
                cpu=target.config.cpu,
                memory_mib=target.config.memory_mib,
                artifact=target.artifact,
                environment=environment,
                start_attempt=wait.start_attempt,
                interruptible=target.config.max_retries >= 1,
                namespace=self._settings.temporal_namespace,
            )
            try:
                handle_id = await self._start(provisioner, spec, wait, request)
            except CapacityUnavailableError as exc:
                # No container came of that start (refused, or failed to start): the next start is a new
                # request, with a token of its own (an idempotent RunTask would answer the old refusal).
                wait.start_attempt += 1
                await wait.wait_or_fail(exc, self._client, request.invocation_id, request.execution_id)
                continue
            except VersionNotStoredError as exc:
                # Another control-plane worker on this queue may have the version: let it try, a few times.
                raise ApplicationError(
                    str(exc), type=ErrorType.VERSION_NOT_STORED, non_retryable=activity.info().attempt >= 5
                ) from exc
            except ProvisionerError as exc:
                raise ApplicationError(str(exc), type=ErrorType.PROVISIONER, non_retryable=True) from exc
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Transient (network, AWS server errors, throttled reads) or a bug: the activity is retried,
                # adopting what it started, within the same wait as capacity.
                wait.start_waiting()
                if wait.waited() >= wait.wait_seconds:
                    raise give_up(CapacityUnavailableError(f"{type(exc).__name__}: {exc}"), wait.wait_seconds) from exc
                raise
            return ContainerHandle(
                provisioner=request.provisioner,
                execution_id=request.execution_id,
                handle_id=handle_id,
                grace_period_seconds=self._settings.grace_period_seconds,
                task_queue=provisioner.task_queue(handle_id),
            )

    async def _start(
        self, provisioner: Provisioner, spec: ContainerSpec, wait: CapacityWait, request: ProvisionInput
    ) -> str:
        """Start the container; with a backend whose containers may still fail to start for lack of
        capacity, wait until it has found some (``_FailedToStart`` if it has not)."""
        wait.heartbeat()
        # Shielded: a cancel while RunTask is in flight must still learn the task, to stop it.
        starting = asyncio.ensure_future(run_blocking(provisioner.start, spec, heartbeat_details=wait.details()))
        handle_id: str | None = None
        try:
            handle_id = await asyncio.shield(starting)
            if not provisioner.may_lack_capacity:
                return handle_id
            status = await self._until_started(provisioner, handle_id, wait, request)
        except asyncio.CancelledError:
            # Stopped only for a cancel the workflow asked for. A worker shutting down, a heartbeat
            # timeout or an attempt the server lost means a retry elsewhere adopts this very container.
            details = activity.cancellation_details()
            if (
                details is not None
                and details.cancel_requested
                and not (details.worker_shutdown or details.timed_out or details.not_found)
            ):
                started = handle_id or await _started_anyway(starting)
                if started is not None:  # one request: the reconciler stops it if this is lost
                    await asyncio.shield(run_blocking(_request_stop_quietly, provisioner, started))
            raise
        except Exception as exc:
            final = isinstance(exc, ProvisionerError) or wait.waited() >= wait.wait_seconds
            if handle_id is not None and final and not isinstance(exc, CapacityUnavailableError):
                # Nothing will hand this container over (a retry would adopt it): stop it.
                await asyncio.shield(run_blocking(_request_stop_quietly, provisioner, handle_id))
            raise
        if status.state == ContainerState.EXITED and status.no_capacity:
            error = provisioner.no_capacity_error(status)
            raise _FailedToStart(str(error), limit=error.limit, remedy=error.remedy)
        return handle_id

    async def _until_started(
        self, provisioner: Provisioner, handle_id: str, wait: CapacityWait, request: ProvisionInput
    ) -> ContainerStatus:
        """The container's status once it has left STARTING. A container that stays STARTING long (no
        capacity found yet) counts as a wait for capacity: PENDING, and stopped once the wait is over."""
        loop = asyncio.get_running_loop()
        since = loop.time()
        while True:
            status = await run_blocking(provisioner.status, handle_id, heartbeat_details=wait.details())
            if status.state != ContainerState.STARTING:
                return status
            if loop.time() - since > STARTING_IS_WAITING_SECONDS:
                stuck = CapacityUnavailableError(
                    f"The container has been waiting for capacity for {loop.time() - since:.0f} s "
                    "(Fargate: the task is still PROVISIONING)."
                )
                if wait.waited() >= wait.wait_seconds:
                    await run_blocking(_request_stop_quietly, provisioner, handle_id)
                    raise give_up(stuck, wait.wait_seconds)
                await wait.note(stuck, self._client, request.invocation_id, request.execution_id)
            await wait.sleep(provisioner.status_poll_interval)

    @activity.defn(name=WATCH_ACTIVITY)
    async def watch(self, handle: ContainerHandle) -> ContainerExit:
        """Return once the container has stopped, with why; heartbeats so a lost worker is noticed."""
        provisioner = self._provisioner(handle.provisioner)
        waker = self._watch_wakers.setdefault(handle.handle_id, asyncio.Event())
        try:
            return await self._watch(provisioner, handle, waker)
        finally:
            if self._watch_wakers.get(handle.handle_id) is waker:
                del self._watch_wakers[handle.handle_id]

    async def _watch(self, provisioner: Provisioner, handle: ContainerHandle, waker: asyncio.Event) -> ContainerExit:
        loop = asyncio.get_running_loop()
        notifier = provisioner.exit_notifier(handle.handle_id)  # cheap; not in a thread, so it cannot leak
        interval = provisioner.status_poll_interval
        if notifier is not None:

            def exited() -> None:
                loop.remove_reader(notifier)  # an exited process's pidfd stays readable: once is enough
                waker.set()

            loop.add_reader(notifier, exited)
            interval = max(interval, NOTIFIED_WATCH_INTERVAL)  # the exit wakes the watch: look only now and then
        try:
            return await self._poll_until_exit(provisioner, handle, waker, interval)
        finally:
            if notifier is not None:
                loop.remove_reader(notifier)
                os.close(notifier)

    async def _poll_until_exit(
        self, provisioner: Provisioner, handle: ContainerHandle, waker: asyncio.Event, interval: float
    ) -> ContainerExit:
        while True:
            status = await run_blocking(provisioner.status, handle.handle_id)
            if status.state == ContainerState.EXITED:
                reason = status.reason
                if status.exit_code not in (0, None) or is_resource_limit_exit(reason):
                    logs = await run_blocking(_last_chunk, provisioner, handle.handle_id)
                    tail = "\n".join(logs.strip().splitlines()[-LOG_LINES_IN_EXIT_REASON:])
                    if tail:
                        reason = f"{reason}; last output:\n{tail}"
                return ContainerExit(exit_code=status.exit_code, reason=reason)
            activity.heartbeat()
            try:
                await asyncio.wait_for(waker.wait(), interval)
            except asyncio.TimeoutError:
                pass
            activity.heartbeat()

    @activity.defn(name=DEPROVISION_ACTIVITY)
    async def deprovision(self, handle: ContainerHandle) -> None:
        """Stop the container and return once it is gone, heartbeating; between looks it waits on the
        loop, not in a thread (``Provisioner.request_stop``)."""
        await stop_until_gone(self._provisioner(handle.provisioner), handle.handle_id)
        waker = self._watch_wakers.get(handle.handle_id)
        if waker is not None:
            waker.set()

    def all(self) -> list[Callable[..., Any]]:
        return [self.provision, self.watch, self.deprovision]


class _FailedToStart(CapacityUnavailableError):
    """The started container failed to start for lack of capacity (it never ran)."""


async def _started_anyway(starting: asyncio.Future[str]) -> str | None:
    """The handle a start interrupted by a cancel ended with, if it started anything."""
    while not starting.done():
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            continue  # cancelled again: the call still runs in its thread, wait for it
        except Exception:  # noqa: BLE001 - it failed: nothing to stop
            return None
    if starting.cancelled() or starting.exception() is not None:
        return None
    return starting.result()


def _request_stop_quietly(provisioner: Provisioner, handle_id: str) -> None:
    try:
        provisioner.request_stop(handle_id)
    except Exception:  # noqa: BLE001 - best effort; the reconciler stops what is left
        pass


def _last_chunk(provisioner: Provisioner, handle_id: str, max_chunks: int = 50) -> str:
    """The end of a container's output (its last two chunks), reading at most ``max_chunks`` chunks."""
    previous, last, offset = "", "", None
    for _ in range(max_chunks):
        text, next_offset = provisioner.logs(handle_id, offset)
        if not text or next_offset == offset:
            break
        previous, last, offset = last, text, next_offset
    return previous + last


def pick_provisioner(provisioners: dict[str, Provisioner], name: str) -> Provisioner:
    """The worker's backend called ``name``; a non-retryable error when this worker has none."""
    provisioner = provisioners.get(name)
    if provisioner is None:
        # Not retried here; an invocation provisioning by local activity tries a remote one next,
        # which any control-plane worker on the queue may take.
        raise ApplicationError(
            f"This control-plane worker has no {name!r} provisioner; start one with MULTINODE_PROVISIONER={name}.",
            type=ErrorType.PROVISIONER_MISSING,
            non_retryable=True,
        )
    return provisioner
