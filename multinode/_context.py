"""The invocation this process runs, if any: set by a container's user process when it starts running
the function's code, read by the SDK (a nested start records its parent; a decorated function invoked
from its own project's code runs the same version). Outside a container there is none."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RunningInvocation:
    invocation_id: str
    project_name: str | None
    version_id: str | None


_current: RunningInvocation | None = None


def enter(invocation: RunningInvocation) -> None:
    """Called once per user process (it runs one execution)."""
    global _current
    _current = invocation


def current() -> RunningInvocation | None:
    return _current
