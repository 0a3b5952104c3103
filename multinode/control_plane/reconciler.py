"""Stopping containers whose invocation has closed: the backstop behind deprovisioning.

Every attempt deprovisions its container, and retries until it is gone. A container can still outlive
its invocation: a provision activity cancelled while RunTask was in flight, a worker that died between
RunTask and reporting the task, a workflow terminated by hand, a task stuck pulling its image. Each
control-plane worker therefore looks, every ``MULTINODE_RECONCILE_SECONDS``, at the containers its
backends run (Fargate: the cluster's tasks started by Multinode, tagged with their invocation and
namespace) and stops those of its namespace whose invocation has closed (one it cannot find, it
leaves alone: it may belong to another Temporal service that shares the cluster). Several workers doing
it at once is harmless: stopping is idempotent.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.service import RPCError

from multinode._client import is_not_found
from multinode.activities._blocking import run_blocking
from multinode.errors import ConfigurationError
from multinode.provisioner import Provisioner
from multinode.provisioner.base import RunningContainer

logger = logging.getLogger(__name__)

DEFAULT_RECONCILE_SECONDS = 300.0
"""How often a control-plane worker looks for containers whose invocation has closed."""
MIN_AGE_SECONDS = 120.0
"""Containers younger than this are left alone (their workflow may not be visible yet)."""
DESCRIBE_CONCURRENCY = 8
"""Invocations described at once (one RPC each)."""


def reconcile_interval(environ: Mapping[str, str] | None = None) -> float:
    """``MULTINODE_RECONCILE_SECONDS`` (0 turns the reconciler off)."""
    env = os.environ if environ is None else environ
    raw = (env.get("MULTINODE_RECONCILE_SECONDS") or "").strip()
    if not raw:
        return DEFAULT_RECONCILE_SECONDS
    try:
        seconds = float(raw)
    except ValueError as exc:
        raise ConfigurationError(
            f"MULTINODE_RECONCILE_SECONDS={raw!r} is not a number of seconds (0 turns the reconciler off).",
            parameter="MULTINODE_RECONCILE_SECONDS",
        ) from exc
    if seconds < 0:
        raise ConfigurationError(
            "MULTINODE_RECONCILE_SECONDS must be 0 (off) or more.", parameter="MULTINODE_RECONCILE_SECONDS"
        )
    return seconds


async def reconcile_once(
    client: Client, provisioners: Mapping[str, Provisioner], min_age_seconds: float = MIN_AGE_SECONDS
) -> list[str]:
    """Stop this namespace's containers whose invocation has closed; return their handles."""
    stopped: list[str] = []
    for provisioner in provisioners.values():
        containers = await run_blocking(provisioner.running_containers)
        candidates = [c for c in containers if c.namespace == client.namespace and c.age_seconds >= min_age_seconds]
        closed = await _closed_invocations(client, {c.invocation_id for c in candidates})
        for container in candidates:
            if container.invocation_id in closed and await _stop(provisioner, container):
                stopped.append(container.handle_id)
    return stopped


async def run_reconciler(client: Client, provisioners: Mapping[str, Provisioner], interval: float) -> None:
    """``reconcile_once`` every ``interval`` seconds until cancelled; failures are logged, not raised."""
    while True:
        await asyncio.sleep(interval)
        try:
            stopped = await reconcile_once(client, provisioners)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the next round tries again
            logger.warning("reconciling containers failed: %s", exc)
            continue
        if stopped:
            logger.warning("stopped %d container(s) whose invocation had closed: %s", len(stopped), stopped)


async def _closed_invocations(client: Client, invocation_ids: set[str]) -> set[str]:
    limit = asyncio.Semaphore(DESCRIBE_CONCURRENCY)

    async def closed(invocation_id: str) -> bool:
        if not invocation_id:
            return False  # not a container of an invocation (no tag): not ours to judge
        async with limit:
            try:
                description = await client.get_workflow_handle(invocation_id).describe()
            except RPCError as exc:
                if is_not_found(exc):
                    # Retention elapsed, or a task of another Temporal service sharing the ECS cluster and
                    # the namespace's name: not ours to judge.
                    return False
                raise
        return description.status != WorkflowExecutionStatus.RUNNING

    ids = sorted(invocation_ids)
    answers = await asyncio.gather(*(closed(i) for i in ids))
    return {i for i, is_closed in zip(ids, answers, strict=True) if is_closed}


async def _stop(provisioner: Provisioner, container: RunningContainer) -> bool:
    """Ask for the stop (ECS does the rest; the next round looks again); whether it was asked."""
    logger.warning("stopping container %s: its invocation %s has closed", container.handle_id, container.invocation_id)
    try:
        await run_blocking(provisioner.request_stop, container.handle_id)
    except Exception as exc:  # noqa: BLE001 - one container's failure must not end the round
        logger.warning("could not stop container %s (the next round tries again): %s", container.handle_id, exc)
        return False
    return True
