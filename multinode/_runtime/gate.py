"""What a function may ask of Temporal: the agent's side of the user process's Temporal calls.

The agent holds the container's Temporal connection; the user's code holds none and sends each call
here (``agent_client.py``). A call is made, with the agent's connection, only if it is one the SDK makes
for a nested invocation and it touches only what this invocation owns:

* start an invocation whose parent is this one, with the function's config exactly as the registry
  holds it (a function cannot forge another config, provisioner or artifact), and queue it at its quota;
* read, await and cancel this invocation's children; read this invocation and any project's registry;
* tell this invocation a child started; list this invocation's children.

Anything else (terminate, signals to other workflows, registry updates, other namespaces) is refused
with ``PERMISSION_DENIED``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import temporalio.api.workflowservice.v1 as wsv1
from google.protobuf.message import DecodeError, Message
from temporalio.api.common.v1 import Payloads
from temporalio.api.enums.v1 import WorkflowIdConflictPolicy, WorkflowIdReusePolicy
from temporalio.client import Client
from temporalio.converter import decode_search_attributes
from temporalio.service import RPCError, RPCStatusCode

from multinode._protocol import (
    ACQUIRE_MANY_SIGNAL,
    ACQUIRE_SIGNAL,
    CHILD_STARTED_SIGNAL,
    INVOCATION_WORKFLOW,
    PROJECT_WORKFLOW_ID_PREFIX,
    QUOTA_WORKFLOW,
    SA_FUNCTION,
    SA_PARENT,
    SA_PROJECT,
    SA_VERSION,
    InvocationInput,
    QuotaState,
    SlotRequest,
    quota_workflow_id,
)
from multinode._registry import resolve_version
from multinode.errors import MultinodeError

_ALWAYS = frozenset({"get_system_info", "describe_namespace", "describe_task_queue"})
_READS = frozenset({"describe_workflow_execution", "query_workflow", "get_workflow_execution_history"})
_INVOCATION_ID = re.compile(r"inv-[0-9a-f]{32}")
MAX_CALL_SECONDS = 120.0
"""Longest a relayed call may last (the SDK's long polls ask for less)."""


@dataclass(frozen=True)
class _Child:
    project_name: str
    function_name: str
    max_concurrency: int


class Refused(RPCError):
    def __init__(self, what: str) -> None:
        super().__init__(
            f"a function may only start invocations, and read, await and cancel its own invocation and the ones "
            f"it started; refused: {what}",
            RPCStatusCode.PERMISSION_DENIED,
            b"",
        )


class Gate:
    """Relays the user process's Temporal calls that this invocation may make, refuses the others."""

    def __init__(self, client: Client, task_queue: str, invocation_id: str) -> None:
        self._client = client
        self._task_queue = task_queue
        self._own = invocation_id
        self._children: dict[str, _Child | None] = {}
        """Invocations this one started: with what they were queued at, if started by this attempt."""

    async def call(self, rpc: str, body: bytes, retry: bool, timeout: float | None) -> bytes:
        """Make the call ``rpc`` (a WorkflowService method) if allowed; its response, serialized."""
        method = getattr(self._client.workflow_service, rpc, None)
        request_type = getattr(wsv1, "".join(part.capitalize() for part in rpc.split("_")) + "Request", None)
        if method is None or request_type is None or rpc.startswith("_"):
            raise Refused(f"unknown call {rpc!r}")
        request = request_type()
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise Refused(f"a malformed {rpc} request") from exc
        namespace = getattr(request, "namespace", self._client.namespace)
        if namespace != self._client.namespace:
            raise Refused(f"namespace {namespace!r}")
        child = await self._check(rpc, request)
        seconds = MAX_CALL_SECONDS if timeout is None else min(max(timeout, 0.0), MAX_CALL_SECONDS)
        response: Message = await method(request, retry=retry, timeout=timedelta(seconds=seconds))
        if child is not None and getattr(response, "started", False):
            self._children[request.workflow_id] = child
        return response.SerializeToString()

    async def _check(self, rpc: str, request: Any) -> _Child | None:
        """Refuse the call unless allowed; for a start, the child it will be once started."""
        if rpc in _ALWAYS:
            return None
        if rpc in _READS:
            target = request.execution.workflow_id
            if target == self._own or target.startswith(PROJECT_WORKFLOW_ID_PREFIX) or await self._is_child(target):
                return None
            raise Refused(f"{rpc} of {target}")
        if rpc == "request_cancel_workflow_execution":
            target = request.workflow_execution.workflow_id
            if await self._is_child(target):
                return None
            raise Refused(f"cancelling {target}")
        if rpc in ("list_workflow_executions", "count_workflow_executions"):
            # Only this invocation's children are listed. The query must stand on its own in parentheses,
            # so that nothing in it can reach outside them (``x') OR ('a`).
            if not _balanced(request.query):
                raise Refused(f"the query {request.query!r}")
            mine = f"{SA_PARENT} = '{self._own}'"
            request.query = f"({request.query}) AND {mine}" if request.query else mine
            return None
        if rpc == "start_workflow_execution":
            return await self._check_start(request)
        if rpc == "signal_with_start_workflow_execution":
            self._check_queueing(request)
            return None
        if rpc == "signal_workflow_execution":
            target = request.workflow_execution.workflow_id
            if request.signal_name == CHILD_STARTED_SIGNAL and target == self._own:
                [child] = self._decode(request.input, [str])
                if child in self._children:
                    return None
            raise Refused(f"signal {request.signal_name!r} to {target}")
        raise Refused(rpc)

    async def _check_start(self, request: wsv1.StartWorkflowExecutionRequest) -> _Child:
        what = f"starting {request.workflow_type.name} {request.workflow_id}"
        if request.workflow_type.name != INVOCATION_WORKFLOW or request.task_queue.name != self._task_queue:
            raise Refused(what)
        if not _INVOCATION_ID.fullmatch(request.workflow_id):
            raise Refused(what)
        [started] = self._decode(request.input, [InvocationInput])
        assert isinstance(started, InvocationInput)
        if started.parent_invocation_id != self._own:
            raise Refused(f"{what}: its parent must be {self._own}")
        attributes = decode_search_attributes(request.search_attributes)
        expected = {
            SA_PROJECT: [started.project_name],
            SA_FUNCTION: [started.function_name],
            SA_VERSION: [started.version_id],
            SA_PARENT: [self._own],
        }
        if any(attributes.get(name) != values for name, values in expected.items()):
            raise Refused(f"{what}: its search attributes do not match its input")
        try:
            version = await resolve_version(self._client, started.project_name, started.version_id)
        except MultinodeError as exc:
            raise RPCError(str(exc), RPCStatusCode.NOT_FOUND, b"") from exc
        record = version.functions.get(started.function_name)
        if (
            record is None
            or record.config != started.config
            or version.provisioner != started.provisioner
            or version.artifact != started.artifact
        ):
            raise Refused(f"{what}: its function, config or artifact differ from the registry's")
        # A new workflow, never an existing one taken over (which would then count as a child).
        request.workflow_id_reuse_policy = WorkflowIdReusePolicy.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE
        request.workflow_id_conflict_policy = WorkflowIdConflictPolicy.WORKFLOW_ID_CONFLICT_POLICY_FAIL
        request.ClearField("on_conflict_options")
        return _Child(started.project_name, started.function_name, started.config.max_concurrency)

    def _check_queueing(self, request: wsv1.SignalWithStartWorkflowExecutionRequest) -> None:
        what = f"queueing at {request.workflow_id}"
        if request.workflow_type.name != QUOTA_WORKFLOW or request.task_queue.name != self._task_queue:
            raise Refused(what)
        [state] = self._decode(request.input, [QuotaState])
        if not isinstance(state, QuotaState) or state.quota_id != request.workflow_id:
            raise Refused(what)
        if request.signal_name == ACQUIRE_SIGNAL:
            requests: Sequence[Any] = self._decode(request.signal_input, [SlotRequest])
        elif request.signal_name == ACQUIRE_MANY_SIGNAL:
            [requests] = self._decode(request.signal_input, [list[SlotRequest]])
        else:
            raise Refused(what)
        for slot in requests:
            child = self._children.get(slot.invocation_id) if isinstance(slot, SlotRequest) else None
            if (
                child is None
                or quota_workflow_id(child.project_name, child.function_name) != request.workflow_id
                or slot.max_concurrency != child.max_concurrency
            ):
                raise Refused(f"{what} for an invocation this one did not start")

    async def _is_child(self, workflow_id: str) -> bool:
        if workflow_id in self._children:
            return True
        if not _INVOCATION_ID.fullmatch(workflow_id):
            return False
        try:
            description = await self._client.get_workflow_handle(workflow_id).describe()
        except RPCError:
            return False
        memo = await description.memo()
        if memo.get("parent_invocation") == self._own:
            self._children[workflow_id] = None
            return True
        return False

    def _decode(self, payloads: Payloads, types: list[Any]) -> list[Any]:
        try:
            return self._client.data_converter.payload_converter.from_payloads(payloads.payloads, types)
        except Exception as exc:  # a payload that is not what the SDK sends
            raise Refused("a payload the SDK does not send") from exc


def _balanced(query: str) -> bool:
    """Whether the parentheses of ``query`` balance outside its string literals (and they end closed)."""
    depth, quote, escaped = 0, "", False
    for char in query:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "'\"`":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return False
    return depth == 0 and not quote
