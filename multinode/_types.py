"""Public values returned by the SDK: invocations, their executions and listings."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from multinode._vocabulary import InvocationStatus

__all__ = ["ErrorDetails", "Execution", "Invocation", "InvocationIdsList", "InvocationStatus"]


@dataclass(frozen=True)
class ErrorDetails:
    """What went wrong in the remote code: its exception type, message and formatted traceback."""

    type: str
    message: str
    traceback: str | None = None

    def __str__(self) -> str:
        return f"{self.type}: {self.message}"


@dataclass(frozen=True)
class Execution:
    """One attempt of an invocation, in its own container."""

    execution_id: str
    attempt: int
    status: InvocationStatus
    started_at: datetime | None
    finished_at: datetime | None
    error: ErrorDetails | None
    terminated: bool
    waiting_for_capacity: str | None = None
    """While the cloud has no room for this execution's container yet (the invocation is PENDING): why,
    in the cloud's words. Provisioning retries for ``MULTINODE_CAPACITY_WAIT_SECONDS``."""


@dataclass(frozen=True)
class Invocation:
    invocation_id: str
    status: InvocationStatus
    result: Any
    """The return value once SUCCEEDED; for a generator, the latest yielded value."""
    error: ErrorDetails | None
    terminated: bool
    """True only once the invocation's container is gone."""
    num_failed_attempts: int
    function_name: str
    project_name: str
    version_id: str
    parent_invocation_id: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    executions: list[Execution] = field(default_factory=list)


@dataclass(frozen=True)
class InvocationIdsList:
    invocation_ids: list[str]
    """Newest first."""
    offset: str | None
    """Pass to ``.list(offset=...)`` for the next page; None on the last page."""
