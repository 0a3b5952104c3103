"""Reading an execution's output through the control plane, which holds the provisioner's access."""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from multinode._protocol import LOGS_WORKFLOW, READ_LOGS_ACTIVITY, LogsChunk, LogsRequest


@workflow.defn(name=LOGS_WORKFLOW)
class LogsWorkflow:
    @workflow.run
    async def run(self, request: LogsRequest) -> LogsChunk:
        chunk: LogsChunk = await workflow.execute_activity(
            READ_LOGS_ACTIVITY,
            request,
            result_type=LogsChunk,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
        return chunk
