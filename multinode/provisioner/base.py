"""The narrow interface every container backend implements: start, status, stop, logs."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from multinode._vocabulary import ContainerState


@dataclass(frozen=True)
class ContainerSpec:
    """One execution's container: what to run and how big."""

    execution_id: str
    invocation_id: str
    project_name: str
    version_id: str
    function_name: str
    cpu: float
    memory_mib: int
    artifact: dict[str, str]
    environment: dict[str, str] = field(default_factory=dict)
    """Multinode's runtime settings for the container (never the user's ``.env``)."""


@dataclass(frozen=True)
class ContainerStatus:
    state: ContainerState
    exit_code: int | None = None
    reason: str = ""


class Provisioner(abc.ABC):
    """Starts one container per execution. Every method is idempotent and safe to retry."""

    name: str
    status_poll_interval: float = 1.0
    """How often the control plane may call ``status`` for one container, in seconds."""

    @abc.abstractmethod
    def start(self, spec: ContainerSpec) -> str:
        """Start the container (or find the one already started for this execution); return its handle."""

    @abc.abstractmethod
    def status(self, handle_id: str) -> ContainerStatus:
        """Whether the container still runs; once exited, its exit code and a readable reason."""

    @abc.abstractmethod
    def stop(self, handle_id: str) -> None:
        """Kill the container now and return once it is gone. Stopping a stopped container is a no-op."""

    @abc.abstractmethod
    def logs(self, handle_id: str, offset: str | None = None) -> tuple[str, str]:
        """What the container printed (stdout and stderr) after ``offset``, and the offset to read on
        from. Offsets are opaque; None means the beginning."""

    def task_queue(self, handle_id: str) -> str | None:
        """The task queue the container polls for its execution, when the backend chose it (the local
        provisioner's pre-started containers have their own); None: ``container_task_queue(execution_id)``."""
        return None

    def exit_notifier(self, handle_id: str) -> int | None:
        """A file descriptor that becomes readable when the container exits (the caller closes it), so a
        watch need not poll; None: poll ``status`` every ``status_poll_interval``."""
        return None

    def close(self) -> None:  # noqa: B027 - a no-op unless the backend holds something
        """Release what the backend holds for this process (the local one's templates and their pools of
        unassigned containers) when the control-plane worker stops. Started containers keep running."""
