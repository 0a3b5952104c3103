"""The log reader: one workflow per control-plane task queue whose query reads an execution's output.

Logs never pass through a history: a query is not recorded. The workflow itself only waits, for ever
(no timer, no activity), so its history stays at its first few events and never needs continue-as-new.
The query handler reads through the provisioner of the worker that answers it (looked up by task
queue): I/O in a query handler cannot break determinism, since a query records nothing and changes no
state; it is bounded (a chunk of at most 1 MB, a wait of at most 1 s, see ``log_reads``).
"""

from __future__ import annotations

from temporalio import workflow

from multinode._protocol import LOG_READER_WORKFLOW, READ_LOGS_QUERY, LogsChunk, LogsRequest
from multinode.activities import log_reads


# Unsandboxed: the sandbox would re-import ``log_reads`` for each run, with a registry of its own.
@workflow.defn(name=LOG_READER_WORKFLOW, sandboxed=False)
class LogReaderWorkflow:
    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.query(name=READ_LOGS_QUERY)
    def read_logs(self, request: LogsRequest) -> LogsChunk:
        return log_reads.reads_for(workflow.info().task_queue).read(request)
