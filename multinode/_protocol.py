"""Names and messages shared by the SDK, the workflows, the activities and the container.

Everything here is a plain dataclass or constant so that it can be read inside Temporal's workflow
sandbox and converted by Temporal's default JSON converter (the Web UI shows it readably).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from multinode._config import FunctionConfig

INVOCATION_WORKFLOW = "MultinodeInvocation"
"""Temporal workflow type of an invocation; the workflow id is the invocation id."""
PROJECT_WORKFLOW = "MultinodeProject"
"""Temporal workflow type of a project's registry entry."""
PROJECT_WORKFLOW_ID_PREFIX = "multinode-project:"

RUN_FUNCTION_ACTIVITY = "multinode.run_function"
INTERRUPT_ACTIVITY = "multinode.interrupt"
PROVISION_ACTIVITY = "multinode.provision_container"
WATCH_ACTIVITY = "multinode.watch_container"
DEPROVISION_ACTIVITY = "multinode.deprovision_container"
CANCEL_INVOCATIONS_ACTIVITY = "multinode.cancel_invocations"

DESCRIBE_QUERY = "describe"
VERSION_ENV_QUERY = "version_env"
"""The project registry's query for a version's ``.env`` text (asked by a fargate container's agent)."""
CHILD_STARTED_SIGNAL = "child_started"
PROGRESS_SIGNAL = "progress"
PROVISIONING_SIGNAL = "provisioning_wait"
"""From the provision activity: it waits for capacity (the invocation shows PENDING with why)."""
PROGRESS_QUERY = "progress"
REGISTER_UPDATE = "register_version"
DELETE_UPDATE = "delete_project"
REGISTRY_MEMO_KEY = "registry"

# Custom search attributes (all Keyword) registered on the namespace by `mn dev` / `mn worker`.
SA_PROJECT = "MultinodeProject"
SA_FUNCTION = "MultinodeFunction"
SA_VERSION = "MultinodeVersion"
SA_STATUS = "MultinodeStatus"
SA_PARENT = "MultinodeParentInvocation"
SEARCH_ATTRIBUTES = (SA_PROJECT, SA_FUNCTION, SA_VERSION, SA_STATUS, SA_PARENT)

# Environment of a container process (set by the provisioner, read by multinode._runtime).
ENV_EXECUTION_ID = "MULTINODE_EXECUTION_ID"
ENV_INVOCATION_ID = "MULTINODE_INVOCATION_ID"
ENV_CONTAINER_TASK_QUEUE = "MULTINODE_CONTAINER_TASK_QUEUE"
ENV_PROJECT = "MULTINODE_PROJECT"
ENV_VERSION = "MULTINODE_VERSION_ID"
ENV_FUNCTION = "MULTINODE_FUNCTION"


def project_workflow_id(project_name: str) -> str:
    return f"{PROJECT_WORKFLOW_ID_PREFIX}{project_name}"


def container_task_queue(execution_id: str) -> str:
    return f"multinode-container:{execution_id}"


# --- registry ---------------------------------------------------------------------------------


@dataclass
class Parameter:
    """One parameter of a function's signature, so the SDK can check arguments at ``.start``."""

    name: str
    kind: str  # inspect.Parameter.kind name, e.g. "POSITIONAL_OR_KEYWORD"
    has_default: bool


@dataclass
class FunctionRecord:
    name: str
    config: FunctionConfig
    parameters: list[Parameter] = field(default_factory=list)


@dataclass
class VersionRecord:
    version_id: str
    created_at: str
    """ISO 8601 (UTC); a string for the same reason as ``SlotRequest.created_at``."""
    code_digest: str
    provisioner: str
    artifact: dict[str, str]
    """What the provisioner needs to run this version (local: code digest and environment key;
    fargate: image URI pinned by digest). Never holds the values of the tasks folder's ``.env``."""
    functions: dict[str, FunctionRecord]


@dataclass
class VersionRegistration:
    code_digest: str
    provisioner: str
    artifact: dict[str, str]
    functions: dict[str, FunctionRecord]
    dotenv: str = field(default="", repr=False)
    """fargate: the tasks folder's ``.env`` (not in the image). The registry keeps it out of its memo and
    of ``VersionRecord``; containers read it with ``VERSION_ENV_QUERY`` (encrypted when payloads are;
    registration warns when they are not). Empty for local versions: they load the stored folder's file."""


@dataclass
class ProjectState:
    project_name: str
    versions: list[VersionRecord] = field(default_factory=list)
    next_version_number: int = 1
    deleted: bool = False

    @property
    def latest(self) -> VersionRecord | None:
        return self.versions[-1] if self.versions else None


# --- invocations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionTarget:
    """What an invocation runs: one function of one registered version, with what the registry holds
    for it. Built from the registry (``of``), carried by the invocation's input and each provisioning
    request, and compared by the gate; the wire dataclasses below keep these as flat fields (what
    recorded histories hold), and expose them as ``target``."""

    project_name: str
    version_id: str
    function_name: str
    config: FunctionConfig
    provisioner: str
    artifact: dict[str, str]

    @classmethod
    def of(cls, project_name: str, version: VersionRecord, function: FunctionRecord) -> FunctionTarget:
        return cls(
            project_name=project_name,
            version_id=version.version_id,
            function_name=function.name,
            config=function.config,
            provisioner=version.provisioner,
            artifact=dict(version.artifact),
        )

    def fields(self) -> dict[str, Any]:
        """Keyword arguments of the flat wire dataclasses."""
        return {
            "project_name": self.project_name,
            "version_id": self.version_id,
            "function_name": self.function_name,
            "config": self.config,
            "provisioner": self.provisioner,
            "artifact": dict(self.artifact),
        }


def _target_of(value: InvocationInput | ProvisionInput) -> FunctionTarget:
    return FunctionTarget(
        value.project_name, value.version_id, value.function_name, value.config, value.provisioner, value.artifact
    )


@dataclass
class InvocationInput:
    project_name: str
    version_id: str
    function_name: str
    config: FunctionConfig
    provisioner: str
    artifact: dict[str, str]
    args: Any
    """The jsonpickle form of ``{"args": [...], "kwargs": {...}}`` as JSON; never decoded here."""
    parent_invocation_id: str | None = None
    slot_requested: bool = False
    """The starter asks the quota for a slot itself, right after starting the workflow (so slots go
    first come, first served); the workflow then only asks if no grant arrives for a while."""

    @classmethod
    def for_target(cls, target: FunctionTarget, args: Any, **options: Any) -> InvocationInput:
        return cls(**target.fields(), args=args, **options)

    @property
    def target(self) -> FunctionTarget:
        return _target_of(self)


@dataclass
class ErrorInfo:
    type: str  # an ErrorType (multinode._vocabulary), or the class name of the user's error
    message: str
    traceback: str | None = None


@dataclass
class ExecutionState:
    execution_id: str
    attempt: int
    status: str  # an InvocationStatus (multinode._vocabulary)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: ErrorInfo | None = None
    terminated: bool = False
    container_handle: str | None = None
    """The provisioner's handle of this execution's container (task ARN on Fargate)."""
    waiting_for_capacity: str | None = None
    """While provisioning waits for capacity: why (the invocation is PENDING meanwhile)."""


@dataclass
class InvocationState:
    invocation_id: str
    project_name: str
    version_id: str
    function_name: str
    status: str  # an InvocationStatus (multinode._vocabulary)
    created_at: datetime
    parent_invocation_id: str | None = None
    provisioner: str = "local"
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: Any = None
    error: ErrorInfo | None = None
    terminated: bool = False
    num_failed_attempts: int = 0
    executions: list[ExecutionState] = field(default_factory=list)


# --- activities -------------------------------------------------------------------------------


@dataclass
class ContainerHandle:
    provisioner: str
    execution_id: str
    handle_id: str
    grace_period_seconds: float
    """The control plane's grace period, fixed when the container starts (workflows read no settings)."""
    task_queue: str | None = None
    """The queue the container polls, if the provisioner chose it; None: ``container_task_queue(execution_id)``."""


@dataclass
class ProvisionInput:
    invocation_id: str
    execution_id: str
    project_name: str
    version_id: str
    function_name: str
    config: FunctionConfig
    provisioner: str
    artifact: dict[str, str]

    @classmethod
    def for_target(cls, target: FunctionTarget, invocation_id: str, execution_id: str) -> ProvisionInput:
        return cls(invocation_id=invocation_id, execution_id=execution_id, **target.fields())

    @property
    def target(self) -> FunctionTarget:
        return _target_of(self)


@dataclass
class ContainerExit:
    exit_code: int | None
    reason: str


@dataclass
class RunInput:
    invocation_id: str
    execution_id: str
    function_name: str
    args: Any
    timeout_seconds: float
    grace_period_seconds: float
    progress_signal_budget: int = 0
    """How many progress signals this execution may send to its workflow (history has limits)."""
    progress_bytes_budget: int = 0
    """How many bytes of progress this execution may send to its workflow."""


@dataclass
class ProvisioningWait:
    execution_id: str
    reason: str
    """Why the container cannot start yet, in the backend's words."""


@dataclass
class ProgressUpdate:
    execution_id: str
    value: Any
    """jsonpickle form of the latest yielded value, as JSON."""


@dataclass
class RunOutput:
    result: Any
    """jsonpickle form of the return value (or the last yielded value) as JSON."""


@dataclass
class InterruptInput:
    reason: str  # an InterruptReason (multinode._vocabulary)


# --- concurrency quotas -----------------------------------------------------------------------

QUOTA_WORKFLOW = "MultinodeQuota"
"""One per (project, function): grants execution slots first come, first served."""
QUOTA_WORKFLOW_ID_PREFIX = "multinode-quota:"
REQUEST_SLOT_ACTIVITY = "multinode.request_slot"
RELEASE_SLOT_ACTIVITY = "multinode.release_slot"
GRANT_SLOTS_ACTIVITY = "multinode.grant_slots"
FIND_CLOSED_ACTIVITY = "multinode.find_closed_invocations"
ACQUIRE_SIGNAL = "acquire"
ACQUIRE_MANY_SIGNAL = "acquire_many"
RELEASE_SIGNAL = "release"
SLOT_GRANTED_SIGNAL = "slot_granted"


def quota_workflow_id(project_name: str, function_name: str) -> str:
    return f"{QUOTA_WORKFLOW_ID_PREFIX}{project_name}:{function_name}"


@dataclass
class GrantSlotsInput:
    invocation_ids: list[str]
    granted_at: str
    """ISO 8601: the quota's clock at the grant."""


@dataclass
class ReleaseSlotInput:
    quota_id: str
    invocation_id: str


@dataclass
class SlotRequest:
    invocation_id: str
    created_at: str
    """ISO 8601 (UTC), informative: slots are granted in the order requests reach the quota (workflows
    started before that rule sort by it). Strings, not datetimes: inside the workflow sandbox Temporal's
    converter does not turn JSON back into ``datetime`` fields."""
    max_concurrency: int


@dataclass
class QuotaState:
    quota_id: str
    holders: list[str] = field(default_factory=list)
    waiting: list[SlotRequest] = field(default_factory=list)


@dataclass
class RequestSlotInput:
    quota_id: str
    request: SlotRequest


# --- logs -------------------------------------------------------------------------------------

LOG_READER_WORKFLOW = "MultinodeLogReader"
"""One workflow per task queue that never ends and does nothing: its ``read_logs`` query reads an
execution's output through the provisioner of the control-plane worker answering it (which has the
provisioner's access: local files, CloudWatch Logs). Queries are not recorded in history."""
LOG_READER_WORKFLOW_ID_PREFIX = "multinode-log-reader:"
READ_LOGS_QUERY = "read_logs"

LOGS_WORKFLOW = "MultinodeLogs"
"""Before the log reader: a short workflow per chunk read (each chunk stored twice in its history). No
longer started; still registered so that runs of it in flight during an upgrade finish."""
READ_LOGS_ACTIVITY = "multinode.read_logs"


def log_reader_workflow_id(task_queue: str) -> str:
    return f"{LOG_READER_WORKFLOW_ID_PREFIX}{task_queue}"


@dataclass
class LogsRequest:
    provisioner: str
    execution_id: str
    offset: str | None = None
    container_handle: str | None = None
    """The provisioner's handle, when known; else the execution id is used."""
    """Where the previous chunk ended; None for the beginning."""


@dataclass
class LogsChunk:
    text: str
    offset: str
    pending: bool = False
    """The read is still running on the worker (a slow backend): ask again with the same request."""
