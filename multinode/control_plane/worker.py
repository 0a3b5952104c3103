"""The control-plane worker: invocation and registry workflows plus provisioner activities.

It never runs user code. Any number of them may share one task queue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import AsyncExitStack
from datetime import timedelta

from temporalio.api.enums.v1 import IndexedValueType
from temporalio.api.operatorservice.v1 import AddSearchAttributesRequest, ListSearchAttributesRequest
from temporalio.api.workflowservice.v1 import GetSystemInfoRequest
from temporalio.client import Client
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError
from temporalio.worker import Worker

from multinode._client import connect
from multinode._protocol import LOG_READER_WORKFLOW, SEARCH_ATTRIBUTES, log_reader_workflow_id
from multinode._settings import MultinodeSettings
from multinode.activities import all_activities, log_reads
from multinode.activities._blocking import configure_blocking, provisioner_threads
from multinode.control_plane import health
from multinode.control_plane.reconciler import reconcile_interval, run_reconciler
from multinode.provisioner import Provisioner, create_provisioner
from multinode.workflows import InvocationWorkflow, LogReaderWorkflow, LogsWorkflow, ProjectWorkflow, QuotaWorkflow

logger = logging.getLogger("multinode.worker")

MAX_CONCURRENT_ACTIVITIES = 2_000
"""Activities one control-plane worker runs at once: slots, not threads. Nearly all are watches, one per
running container, each an async wait that looks at its container every few seconds (Fargate: through
DescribeTasks answers shared by all watches, 100 tasks a call); a deprovision waits between its looks on
the loop too. The blocking provisioner calls among them (starts, stops, status refreshes, log reads)
run at most ``MULTINODE_PROVISIONER_THREADS`` at a time, the others wait in that executor's queue while
their activities heartbeat. So this bounds the containers one worker watches at once. Measured against
moto (benchmarks/bench_fargate_worker.py, 2 cores shared with moto): 500 provisions, watches and
deprovisions at once kept every heartbeat within 5.2 s; 2,000 within 10.3 s of the watches' 30 s
timeout, though moto's own slowness at that many tasks then stretched the status polls."""
MAX_CONCURRENT_WORKFLOW_TASKS = 16
"""Workflow tasks one control-plane worker runs at once. Workflow code holds the GIL, so more at once
only slows each: with the SDK's 100, a burst of 120 new invocations on a busy 2-core machine ran every
task past Temporal's 10 s workflow-task timeout, again and again. Waiting tasks stay with the server."""
MAX_CACHED_WORKFLOWS = 500
"""Workflow runs one control-plane worker keeps in memory between their tasks (the SDK's default is
1,000). Each costs about 0.1 MB; a run pushed out is replayed from its history at its next task, which
for an invocation waiting for its slot is a few events. Bounds the worker's memory under a deep queue."""


async def ensure_search_attributes(client: Client) -> None:
    """Register Multinode's search attributes on the namespace if they are missing."""
    existing = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    missing = [name for name in SEARCH_ATTRIBUTES if name not in existing.custom_attributes]
    if not missing:
        return
    try:
        await client.operator_service.add_search_attributes(
            AddSearchAttributesRequest(
                namespace=client.namespace,
                search_attributes={name: IndexedValueType.INDEXED_VALUE_TYPE_KEYWORD for name in missing},
            )
        )
    except RPCError as exc:
        logger.error(
            "Could not register search attributes %s (%s); create them as Keyword with "
            "`temporal operator search-attribute create`.",
            ", ".join(missing),
            exc,
        )


async def ensure_log_reader(client: Client, task_queue: str) -> None:
    """Start the task queue's log reader workflow unless it runs (any worker on the queue answers it)."""
    try:
        await client.start_workflow(
            LOG_READER_WORKFLOW,
            id=log_reader_workflow_id(task_queue),
            task_queue=task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        )
    except RPCError as exc:  # the SDK starts it too when it finds none: not a reason to stop the worker
        logger.warning("Could not start the log reader workflow on %r: %s", task_queue, exc)


def build_worker(client: Client, settings: MultinodeSettings, provisioner: Provisioner) -> Worker:
    """The worker; it answers log reads only inside ``log_reads.serving`` (which ``run_worker`` opens)."""
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=[InvocationWorkflow, LogReaderWorkflow, LogsWorkflow, ProjectWorkflow, QuotaWorkflow],
        activities=all_activities(client, settings, {provisioner.name: provisioner}),
        # Every running invocation holds a long watch activity here (async, cheap): the default of
        # 100 would let watches starve provisioning and deprovisioning.
        max_concurrent_activities=MAX_CONCURRENT_ACTIVITIES,
        max_concurrent_workflow_tasks=MAX_CONCURRENT_WORKFLOW_TASKS,
        max_cached_workflows=MAX_CACHED_WORKFLOWS,
    )


async def run_worker(
    settings: MultinodeSettings, stop: asyncio.Event | None = None, started: threading.Event | None = None
) -> None:
    """Run a control-plane worker until ``stop`` is set (or forever); ``started`` is set once it polls.
    Also reads ``MULTINODE_PROVISIONER_THREADS``, ``MULTINODE_WORKER_HEALTH_PORT`` and
    ``MULTINODE_RECONCILE_SECONDS``."""
    executor = configure_blocking(provisioner_threads())
    health_port = health.health_port()
    reconcile_every = reconcile_interval()
    client = await connect(settings)
    await ensure_search_attributes(client)
    provisioner = create_provisioner(settings.provisioner, settings.home)
    try:
        async with AsyncExitStack() as stack:
            if health_port is not None:

                async def probe() -> object:
                    return await client.workflow_service.get_system_info(
                        GetSystemInfoRequest(), timeout=timedelta(seconds=health.TEMPORAL_PROBE_TIMEOUT_SECONDS)
                    )

                await stack.enter_async_context(health.serving(health_port, probe, executor.load))
            stack.enter_context(log_reads.serving(settings.task_queue, {provisioner.name: provisioner}))
            await stack.enter_async_context(build_worker(client, settings, provisioner))
            await ensure_log_reader(client, settings.task_queue)
            if reconcile_every > 0 and type(provisioner).running_containers is not Provisioner.running_containers:
                reconciler = asyncio.create_task(
                    run_reconciler(client, {provisioner.name: provisioner}, reconcile_every), name="reconciler"
                )
                stack.callback(reconciler.cancel)
            logger.info(
                "control-plane worker polling %r on %s (%d threads for provisioner calls%s)",
                settings.task_queue,
                settings.temporal_address,
                executor.threads,
                f", health check on 127.0.0.1:{health_port}{health.HEALTH_PATH}" if health_port else "",
            )
            if started is not None:
                started.set()
            await (stop or asyncio.Event()).wait()
    finally:
        provisioner.close()  # after the worker's last activity: no provision is in flight
