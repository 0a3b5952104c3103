"""Temporal workflows of the control plane: deterministic, no I/O."""

from multinode.workflows.invocation import InvocationWorkflow
from multinode.workflows.project import ProjectWorkflow

__all__ = ["InvocationWorkflow", "ProjectWorkflow"]
