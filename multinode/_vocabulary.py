"""Multinode's one vocabulary: invocation statuses, error types, interrupt reasons, container states and
exit reasons, shared by the workflows, the activities, the container's processes, the provisioners and
the SDK. Nowhere else in the package is one of these values written as a string (tests/test_vocabulary.py).

Each is a str-enum whose values are the exact strings that travel in payloads, search attributes,
``ApplicationError`` types and recorded workflow histories: a member equals its value (a value decoded
from JSON as a plain ``str`` still matches it) and encodes as it (``json``, Temporal's converter). A value
changed here breaks invocations in flight and the replay of recorded histories.

Enums and pure functions only, standard library only, no I/O: safe in Temporal's workflow sandbox and in
the local provisioner's stdlib-only shim.
"""

from __future__ import annotations

import enum


class _Vocabulary(str, enum.Enum):
    """A str-enum that prints and formats as its value (``f"{member}"`` is the plain string)."""

    def __str__(self) -> str:
        return str(self.value)


class InvocationStatus(_Vocabulary):
    """Where an invocation (or one execution of it) stands; the ``MultinodeStatus`` search attribute."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    CANCELLING = "CANCELLING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMED_OUT = "TIMED_OUT"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset(
    {InvocationStatus.SUCCEEDED, InvocationStatus.FAILED, InvocationStatus.CANCELLED, InvocationStatus.TIMED_OUT}
)
"""The statuses an invocation ends with; ``status in FINAL_STATUSES`` holds for a plain ``str`` too."""


class ErrorType(_Vocabulary):
    """The ``type`` of the ``ApplicationError``s Multinode raises, and of an ``ErrorInfo`` it records.

    A user's own error keeps its class name instead (``describe_error`` in ``_runtime/user.py``).
    """

    ERROR = "Error"
    """An error that names no type of its own."""
    EXCEPTION = "Exception"
    """A user error whose class could not even be told."""
    INVOCATION_CANCELLED = "InvocationCancelledError"
    INVOCATION_TIMED_OUT = "InvocationTimedOutError"
    PAYLOAD = "PayloadError"
    PROCESS_EXITED = "ProcessExitedError"
    """The function's process ended before it returned or raised."""
    WRONG_CONTAINER = "WrongContainerError"
    CONTAINER_LOST = "ContainerLostError"
    """The container stopped heartbeating, or never started polling."""
    CONTAINER_EXITED = "ContainerExitedError"
    PROVISIONER = "ProvisionerError"
    PROVISIONER_MISSING = "ProvisionerMissingError"
    """This control-plane worker has no backend of that name (another worker on the queue may)."""
    VERSION_NOT_STORED = "VersionNotStoredError"
    """The local provisioner's home lacks the version (another worker on the queue may have it)."""
    CAPACITY_UNAVAILABLE = "CapacityUnavailableError"
    """Provisioning waited ``MULTINODE_CAPACITY_WAIT_SECONDS`` for capacity in vain."""
    LOG_READ = "LogReadError"
    WORKFLOW_CLOSED = "WorkflowClosedError"
    """The invocation's workflow was closed outside Multinode (terminated, say)."""


AGENT_ONLY_ERROR_TYPES = frozenset({ErrorType.INVOCATION_CANCELLED, ErrorType.INVOCATION_TIMED_OUT})
"""Error types only a container's agent may report (it alone knows whether it interrupted the call)."""
WORKER_LOCAL_ERROR_TYPES = frozenset({ErrorType.VERSION_NOT_STORED, ErrorType.PROVISIONER_MISSING})
"""Provisioning errors of one control-plane worker only (another worker on the queue may succeed)."""


def user_error_type(name: str) -> str:
    """The type reported for a user error of class ``name``: an agent-only type is qualified by its module,
    so that it cannot pass for the agent's own report."""
    return f"multinode.errors.{name}" if name in AGENT_ONLY_ERROR_TYPES else name


class InterruptReason(_Vocabulary):
    """Why a container's agent interrupts the user code (the ``interrupt`` activity and frame)."""

    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class ContainerState(_Vocabulary):
    """Whether a provisioner's container still runs."""

    STARTING = "starting"
    """Accepted, but the backend has not yet found capacity for it (Fargate: PROVISIONING); it may still
    fail to start for lack of capacity. Counts as running for everything but provisioning."""
    RUNNING = "running"
    EXITED = "exited"


class ExitReason(_Vocabulary):
    """The first words of a container's exit reason, for the exits that code tells apart; the rest of the
    reason is details in words (``ExitReason.OUT_OF_MEMORY.with_details(...)``)."""

    OUT_OF_MEMORY = "out of memory"
    TOO_MANY_PROCESSES = "too many processes"
    EXITED_NORMALLY = "exited normally"

    def with_details(self, details: str) -> str:
        return f"{self.value}: {details}"

    @classmethod
    def of(cls, reason: str) -> ExitReason | None:
        """The kind of exit ``reason`` describes, if it is one of these."""
        return next((member for member in cls if reason.startswith(member.value)), None)

    @property
    def is_resource_limit(self) -> bool:
        """The container was stopped for going over a limit of its function (memory, processes)."""
        return self in (ExitReason.OUT_OF_MEMORY, ExitReason.TOO_MANY_PROCESSES)


def is_resource_limit_exit(reason: str) -> bool:
    """Whether the exit ``reason`` says the container was stopped for going over its memory or process limit."""
    kind = ExitReason.of(reason)
    return kind is not None and kind.is_resource_limit
