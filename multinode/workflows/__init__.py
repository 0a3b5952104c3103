"""Temporal workflows of the control plane: deterministic, no I/O."""

from multinode.workflows.invocation import InvocationWorkflow
from multinode.workflows.logs import LogsWorkflow
from multinode.workflows.project import ProjectWorkflow
from multinode.workflows.quota import QuotaWorkflow

__all__ = ["InvocationWorkflow", "LogsWorkflow", "ProjectWorkflow", "QuotaWorkflow"]
