"""Temporal workflows of the control plane: deterministic, no I/O (but the log reader's query, which records
nothing)."""

from multinode.workflows.invocation import InvocationWorkflow
from multinode.workflows.log_reader import LogReaderWorkflow
from multinode.workflows.logs import LogsWorkflow
from multinode.workflows.project import ProjectWorkflow
from multinode.workflows.quota import QuotaWorkflow

__all__ = ["InvocationWorkflow", "LogReaderWorkflow", "LogsWorkflow", "ProjectWorkflow", "QuotaWorkflow"]
