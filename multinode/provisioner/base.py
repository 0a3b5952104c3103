"""The narrow interface every container backend implements: start, status, stop, logs."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field

from multinode._vocabulary import ContainerState
from multinode.errors import ProvisionerError


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
    """Multinode's runtime settings for the container (never the user's ``.env``), secrets included: a
    backend delivers those apart from the rest, out of user code's reach."""
    start_attempt: int = 0
    """How many times this execution's container failed to start for lack of capacity before: a new
    start is a new container, not a retry of the same request (idempotency tokens differ)."""
    interruptible: bool = False
    """The function is retried (``max_retries >= 1``), so it tolerates its container being reclaimed
    (Fargate Spot)."""
    namespace: str = "default"
    """The Temporal namespace of the invocation (containers are labelled with it)."""


@dataclass(frozen=True)
class ContainerStatus:
    state: ContainerState
    exit_code: int | None = None
    reason: str = ""
    no_capacity: bool = False
    """Exited without ever running because the backend had no capacity for it (Fargate's
    ``TaskFailedToStart`` for capacity): starting it again later is the remedy, not a retry."""


@dataclass(frozen=True)
class RunningContainer:
    """A container the backend runs, as the reconciler sees it."""

    handle_id: str
    invocation_id: str
    namespace: str
    age_seconds: float
    """How long ago it was started."""


class CapacityUnavailableError(ProvisionerError):
    """The backend cannot start the container now for lack of capacity or quota, or because it is
    throttled: provisioning waits and tries again (``MULTINODE_CAPACITY_WAIT_SECONDS``)."""

    def __init__(self, message: str, *, limit: str = "", remedy: str = "") -> None:
        super().__init__(message)
        self.limit = limit
        """The limit that was hit, in AWS's words (e.g. the Service Quotas name)."""
        self.remedy = remedy
        """How to raise it, for the message of an invocation that waited in vain."""


class Provisioner(abc.ABC):
    """Starts one container per execution. Every method is idempotent and safe to retry."""

    name: str
    status_poll_interval: float = 1.0
    """How often the control plane may call ``status`` for one container, in seconds."""
    stop_poll_interval: float = 1.0
    """How often the control plane calls ``request_stop`` until the container is gone, in seconds."""
    may_lack_capacity: bool = False
    """Whether a started container may still fail to start for lack of capacity (``ContainerState.STARTING``,
    then ``no_capacity``): provisioning then waits for it to leave STARTING before it hands it over."""

    @abc.abstractmethod
    def start(self, spec: ContainerSpec) -> str:
        """Start the container (or find the one already started for this execution); return its handle."""

    @abc.abstractmethod
    def status(self, handle_id: str) -> ContainerStatus:
        """Whether the container still runs; once exited, its exit code and a readable reason."""

    @abc.abstractmethod
    def stop(self, handle_id: str) -> None:
        """Kill the container now and return once it is gone. Stopping a stopped container is a no-op."""

    def request_stop(self, handle_id: str) -> bool:
        """Ask for the container to stop (once; later calls only look) and return at once: whether it
        is gone. The control plane calls it every ``stop_poll_interval`` until True, waiting in between
        without holding a thread. By default, ``stop`` (a backend whose stop is quick)."""
        self.stop(handle_id)
        return True

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

    def no_capacity_error(self, status: ContainerStatus) -> CapacityUnavailableError:
        """What a container that failed to start for lack of capacity (``status.no_capacity``) ran into, with
        the limit and how to raise it, in the backend's terms."""
        return CapacityUnavailableError(f"The container failed to start: {status.reason}")

    def running_containers(self) -> list[RunningContainer]:
        """Every Multinode container this backend runs that outlives the processes that started it (Fargate
        tasks), for the reconciler that stops those whose invocation has closed. Empty by default: a local
        container's agent ends it once it sees its invocation closed, and nothing else can keep it alive."""
        return []
