"""Every error Multinode raises derives from :class:`MultinodeError`.

Errors carry their data in attributes and say what to do next in their message.
"""

from __future__ import annotations

__all__ = [
    "AwaitTimeoutError",
    "ConfigurationError",
    "ControlPlaneUnavailableError",
    "FunctionNotFoundError",
    "InvalidTasksFolderError",
    "InvocationCancelledError",
    "InvocationError",
    "InvocationFailedError",
    "InvocationNotFoundError",
    "InvocationTimedOutError",
    "MultinodeError",
    "NotFoundError",
    "PayloadError",
    "ProjectNotFoundError",
    "ProvisionerError",
    "TemporalUnreachableError",
    "ValidationError",
    "VersionNotFoundError",
    "VersionNotStoredError",
]


class MultinodeError(Exception):
    """Root of every Multinode error."""


# --- input validation -----------------------------------------------------------------------


class ValidationError(MultinodeError, ValueError):
    """An argument, option or setting is invalid; the message says which and why."""


class ConfigurationError(ValidationError):
    """An ``@mn.function`` option or a control-plane setting is out of range or malformed."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class PayloadError(ValidationError):
    """Arguments or a result cannot be serialized, or are over the size limit."""


class InvalidTasksFolderError(ValidationError):
    """The folder given to ``mn register`` is not a valid Multinode tasks folder.

    The message is one line naming the user's own file (``tasks/main.py:12: SyntaxError: ...``).
    ``details`` holds everything behind it (a traceback with paths in the user's folder, or uv's
    output); ``log_path``, once registration has written it, the log that keeps ``details``.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str,
        details: str | None = None,
        file: str | None = None,
        line: int | None = None,
        traceback: str | None = None,
        log_path: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.path = path
        self.details = details
        self.file = file
        self.line = line
        self.traceback = traceback
        self.log_path = log_path

    def __str__(self) -> str:
        # log_path is set after the error is built (by whoever writes the log), so read it here.
        if self.log_path is None:
            return self.message
        what = "traceback" if self.traceback else "output"
        return f"{self.message} (full {what}: {self.log_path})"


# --- lookups ----------------------------------------------------------------------------------


class NotFoundError(MultinodeError, LookupError):
    """Something named by the caller does not exist."""


class ProjectNotFoundError(NotFoundError):
    def __init__(self, project_name: str) -> None:
        super().__init__(
            f"Project {project_name!r} is not registered. "
            f"Register it with `mn register PATH --project {project_name}`; `mn projects` lists them."
        )
        self.project_name = project_name


class VersionNotFoundError(NotFoundError):
    def __init__(self, project_name: str, version_id: str) -> None:
        super().__init__(
            f"Project {project_name!r} has no version {version_id!r}. `mn describe {project_name}` lists its versions."
        )
        self.project_name = project_name
        self.version_id = version_id


class FunctionNotFoundError(NotFoundError):
    def __init__(self, project_name: str, version_id: str, function_name: str, known: list[str]) -> None:
        listing = ", ".join(sorted(known)) or "none"
        super().__init__(
            f"Version {version_id!r} of project {project_name!r} has no function {function_name!r} (it has: {listing})."
        )
        self.project_name = project_name
        self.version_id = version_id
        self.function_name = function_name


class InvocationNotFoundError(NotFoundError):
    def __init__(self, invocation_id: str) -> None:
        super().__init__(
            f"No invocation with id {invocation_id!r}. Ids come from `.start()`; `mn list FUNCTION "
            f"--project NAME` lists recent ones."
        )
        self.invocation_id = invocation_id


# --- infrastructure ---------------------------------------------------------------------------


class TemporalUnreachableError(MultinodeError, ConnectionError):
    """No Temporal frontend answered at the address; ``cause`` says what happened, the message what to do."""

    def __init__(self, address: str, namespace: str, cause: str, advice: str | None = None) -> None:
        if advice is None:
            advice = "Check TEMPORAL_ADDRESS: it must name the Temporal frontend's gRPC port (usually 7233)."
        super().__init__(
            f"Cannot reach Temporal at {address} (namespace {namespace!r}): {cause}." + (f" {advice}" if advice else "")
        )
        self.address = address
        self.namespace = namespace
        self.cause = cause


class ControlPlaneUnavailableError(MultinodeError):
    def __init__(self, task_queue: str, waited_seconds: float) -> None:
        super().__init__(
            f"No Multinode control-plane worker answered on task queue {task_queue!r} within "
            f"{waited_seconds:g} s. Start one with `mn dev` (local stack) or `mn worker`."
        )
        self.task_queue = task_queue


class AwaitTimeoutError(MultinodeError, TimeoutError):
    """``.await_result(timeout=...)`` gave up; the invocation itself goes on."""

    def __init__(self, invocation_id: str, timeout: float) -> None:
        super().__init__(
            f"Invocation {invocation_id} did not finish within {timeout:g} s; it is still running. "
            "Call .await_result again, or .cancel it."
        )
        self.invocation_id = invocation_id
        self.timeout = timeout


class ProvisionerError(MultinodeError):
    """A container could not be built, started, inspected or stopped."""


class VersionNotStoredError(ProvisionerError):
    """The local provisioner's home does not hold the version to run (registered on another machine)."""


# --- invocation outcomes ----------------------------------------------------------------------


class InvocationError(MultinodeError):
    """Base of the errors that describe how an invocation ended."""

    def __init__(self, message: str, *, invocation_id: str | None = None) -> None:
        super().__init__(message)
        self.invocation_id = invocation_id


class InvocationCancelledError(InvocationError):
    """Raised inside user code when its invocation is cancelled, and by ``.await_result``."""

    def __init__(self, message: str = "The invocation was cancelled.", *, invocation_id: str | None = None) -> None:
        super().__init__(message, invocation_id=invocation_id)


class InvocationTimedOutError(InvocationError):
    """Raised inside user code at the function's timeout, and by ``.await_result``."""

    def __init__(self, message: str = "The invocation timed out.", *, invocation_id: str | None = None) -> None:
        super().__init__(message, invocation_id=invocation_id)


class InvocationFailedError(InvocationError):
    """The function raised (or its container died); carries the remote error."""

    def __init__(
        self,
        message: str,
        *,
        invocation_id: str | None = None,
        error_type: str | None = None,
        error_message: str | None = None,
        traceback: str | None = None,
    ) -> None:
        super().__init__(message, invocation_id=invocation_id)
        self.error_type = error_type
        self.error_message = error_message
        self.traceback = traceback
