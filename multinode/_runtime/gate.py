"""What a function may ask of Temporal: the agent's side of the user process's Temporal calls.

The agent holds the container's Temporal connection; the user's code holds none and sends each call
here (``agent_client.py``). A call is made, with the agent's connection, only if it is one the SDK makes
for a nested invocation and it touches only what this invocation owns:

* start an invocation whose parent is this one, with the function's config exactly as the registry
  holds it (a function cannot forge another config, provisioner or artifact), and queue it at its quota;
* read, await and cancel this invocation's children; read this invocation and describe any project's
  registry (not its history or queries: they hold fargate versions' ``.env``);
* tell this invocation a child started; list this invocation's children.

Anything else (terminate, signals to other workflows, registry updates, other namespaces) is refused
with ``PERMISSION_DENIED``.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import temporalio.api.workflowservice.v1 as wsv1
from google.protobuf.message import DecodeError, Message
from temporalio.api.common.v1 import Memo, Payload, Payloads, WorkflowExecution, WorkflowType
from temporalio.api.enums.v1 import WorkflowIdConflictPolicy, WorkflowIdReusePolicy
from temporalio.api.sdk.v1 import UserMetadata
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.converter import encode_search_attributes
from temporalio.service import RPCError, RPCStatusCode

from multinode._client import is_unreachable
from multinode._codec import ENCODING
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
    SA_STATUS,
    SA_VERSION,
    FunctionTarget,
    InvocationInput,
    QuotaState,
    SlotRequest,
    quota_workflow_id,
)
from multinode._registry import resolve_version
from multinode._vocabulary import InvocationStatus
from multinode.errors import MultinodeError

_QUERY_CHARACTERS = frozenset("_ \t\n=<>!,.")
_READS = frozenset({"describe_workflow_execution", "query_workflow", "get_workflow_execution_history"})
_INVOCATION_ID = re.compile(r"inv-[0-9a-f]{32}")
OUTAGE_SECONDS = 600.0
"""How long a relayed call keeps trying while Temporal is away."""
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
        self._identity = f"multinode-agent:{invocation_id}"
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
        request, child = await self._check(rpc, request)
        seconds = MAX_CALL_SECONDS if timeout is None else min(max(timeout, 0.0), MAX_CALL_SECONDS)
        response = await _through_outages(method, request, retry, seconds)
        if child is not None and getattr(response, "started", False):
            self._children[request.workflow_id] = child
        codec = self._client.data_converter.payload_codec
        if codec is not None:  # the user process holds no key: it gets what it may read decrypted
            encrypted = [p for p in payloads_in(response) if p.metadata.get("encoding") == ENCODING]
            try:
                for payload, plain in zip(encrypted, await codec.decode(encrypted), strict=True):
                    payload.CopyFrom(plain)
            except MultinodeError as exc:
                raise RPCError(
                    "a payload could not be decrypted by this container's agent (see its log)",
                    RPCStatusCode.INTERNAL,
                    b"",
                ) from exc
        return response.SerializeToString()

    async def _check(self, rpc: str, request: Any) -> tuple[Any, _Child | None]:
        """Refuse the call unless allowed; otherwise the request to send (a start or a queueing is built
        anew from the fields the SDK sets, checked) and, for a start, the child it will be once started."""
        if rpc in ("get_system_info", "describe_namespace"):
            return request, None
        if rpc == "describe_task_queue":  # whether a control-plane worker polls (the SDK's fail-fast check)
            if request.task_queue.name == self._task_queue:
                return request, None
            raise Refused(f"describing task queue {request.task_queue.name!r}")
        if rpc in _READS:
            target = request.execution.workflow_id
            # A registry only by describe (its memo): its history and queries carry fargate versions' `.env`.
            registry = target.startswith(PROJECT_WORKFLOW_ID_PREFIX) and rpc == "describe_workflow_execution"
            if target == self._own or registry or await self._is_child(target):
                return request, None
            raise Refused(f"{rpc} of {target}")
        if rpc == "request_cancel_workflow_execution":
            target = request.workflow_execution.workflow_id
            if await self._is_child(target):
                return request, None
            raise Refused(f"cancelling {target}")
        if rpc in ("list_workflow_executions", "count_workflow_executions"):
            # Only this invocation's children are listed: the query must stand on its own in parentheses,
            # so that nothing in it can reach outside them (``x') OR ('a``, comments).
            if not contained(request.query):
                raise Refused(f"the query {request.query!r}")
            mine = f"{SA_PARENT} = '{self._own}'"
            request.query = f"({request.query}) AND {mine}" if request.query else mine
            return request, None
        if rpc == "start_workflow_execution":
            return await self._start(request)
        if rpc == "signal_with_start_workflow_execution":
            return await self._queueing(request), None
        if rpc == "signal_workflow_execution":
            target = request.workflow_execution.workflow_id
            if request.signal_name == CHILD_STARTED_SIGNAL and target == self._own:
                [child] = self._decode(request.input, [str])
                if self._children.get(child) is not None:
                    fresh = wsv1.SignalWorkflowExecutionRequest(
                        namespace=self._client.namespace,
                        workflow_execution=WorkflowExecution(workflow_id=self._own),
                        signal_name=CHILD_STARTED_SIGNAL,
                        input=await self._encode([child]),
                        identity=self._identity,
                        request_id=str(uuid.uuid4()),
                    )
                    return fresh, None
            raise Refused(f"signal {request.signal_name!r} to {target}")
        raise Refused(rpc)

    async def _start(self, request: wsv1.StartWorkflowExecutionRequest) -> tuple[Any, _Child]:
        what = f"starting {request.workflow_type.name} {request.workflow_id}"
        if request.workflow_type.name != INVOCATION_WORKFLOW or request.task_queue.name != self._task_queue:
            raise Refused(what)
        if not _INVOCATION_ID.fullmatch(request.workflow_id):
            raise Refused(what)
        [started] = self._decode(request.input, [InvocationInput])
        if not isinstance(started, InvocationInput) or started.parent_invocation_id != self._own:
            raise Refused(f"{what}: its parent must be {self._own}")
        try:
            version = await resolve_version(self._client, started.project_name, started.version_id)
        except MultinodeError as exc:
            raise RPCError(str(exc), RPCStatusCode.NOT_FOUND, b"") from exc
        record = version.functions.get(started.function_name)
        if record is None or started.target != FunctionTarget.of(started.project_name, version, record):
            raise Refused(f"{what}: its function, config or artifact differ from the registry's")
        # Built anew: only what the SDK sets, as the SDK sets it. A new workflow, never an existing one
        # taken over (which would then count as a child); no cron, retry policy or timeouts of the caller's.
        attributes = wsv1.StartWorkflowExecutionRequest().search_attributes
        encode_search_attributes(
            TypedSearchAttributes(
                [
                    SearchAttributePair(SearchAttributeKey.for_keyword(SA_PROJECT), started.project_name),
                    SearchAttributePair(SearchAttributeKey.for_keyword(SA_FUNCTION), started.function_name),
                    SearchAttributePair(SearchAttributeKey.for_keyword(SA_VERSION), started.version_id),
                    SearchAttributePair(SearchAttributeKey.for_keyword(SA_STATUS), InvocationStatus.PENDING),
                    SearchAttributePair(SearchAttributeKey.for_keyword(SA_PARENT), self._own),
                ]
            ),
            attributes,
        )
        memo = {
            "project": started.project_name,
            "function": started.function_name,
            "version": started.version_id,
            "parent_invocation": self._own,
        }
        summary = f"{started.project_name}.{started.function_name} ({started.version_id})"
        memo_payloads = await self._client.data_converter.encode(list(memo.values()))
        [summary_payload] = await self._client.data_converter.encode([summary])
        fresh = wsv1.StartWorkflowExecutionRequest(
            namespace=self._client.namespace,
            workflow_id=request.workflow_id,
            workflow_type=WorkflowType(name=INVOCATION_WORKFLOW),
            task_queue=TaskQueue(name=self._task_queue),
            input=await self._encode([started]),
            identity=self._identity,
            request_id=str(uuid.uuid4()),
            workflow_id_reuse_policy=WorkflowIdReusePolicy.WORKFLOW_ID_REUSE_POLICY_REJECT_DUPLICATE,
            workflow_id_conflict_policy=WorkflowIdConflictPolicy.WORKFLOW_ID_CONFLICT_POLICY_FAIL,
            memo=Memo(fields=dict(zip(memo, memo_payloads, strict=True))),
            search_attributes=attributes,
            user_metadata=UserMetadata(summary=summary_payload),
        )
        return fresh, _Child(started.project_name, started.function_name, started.config.max_concurrency)

    async def _queueing(self, request: wsv1.SignalWithStartWorkflowExecutionRequest) -> Any:
        what = f"queueing at {request.workflow_id}"
        if request.signal_name == ACQUIRE_SIGNAL:
            requests: Sequence[Any] = self._decode(request.signal_input, [SlotRequest])
        elif request.signal_name == ACQUIRE_MANY_SIGNAL:
            [requests] = self._decode(request.signal_input, [list[SlotRequest]])
        else:
            raise Refused(what)
        children = [self._children.get(s.invocation_id) if isinstance(s, SlotRequest) else None for s in requests]
        quota_ids = {quota_workflow_id(c.project_name, c.function_name) for c in children if c is not None}
        if not requests or None in children or quota_ids != {request.workflow_id}:
            raise Refused(f"{what} for an invocation this one did not start")
        slots = [
            SlotRequest(slot.invocation_id, str(slot.created_at), child.max_concurrency)
            for slot, child in zip(requests, children, strict=True)
            if child is not None
        ]
        # Built anew: the quota's state starts empty, whatever the caller sent.
        return wsv1.SignalWithStartWorkflowExecutionRequest(
            namespace=self._client.namespace,
            workflow_id=request.workflow_id,
            workflow_type=WorkflowType(name=QUOTA_WORKFLOW),
            task_queue=TaskQueue(name=self._task_queue),
            input=await self._encode([QuotaState(quota_id=request.workflow_id)]),
            identity=self._identity,
            request_id=str(uuid.uuid4()),
            signal_name=request.signal_name,
            signal_input=await self._encode([slots[0]] if request.signal_name == ACQUIRE_SIGNAL else [slots]),
        )

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

    async def _encode(self, values: list[Any]) -> Payloads:
        """As the agent's own client would send them: encrypted when it has keys (the caller sent them plain)."""
        return Payloads(payloads=await self._client.data_converter.encode(values))

    def _decode(self, payloads: Payloads, types: list[Any]) -> list[Any]:
        try:
            return self._client.data_converter.payload_converter.from_payloads(payloads.payloads, types)
        except Exception as exc:  # a payload that is not what the SDK sends
            raise Refused("a payload the SDK does not send") from exc


async def _through_outages(method: Any, request: Any, retry: bool, seconds: float) -> Message:
    """Make the call; while Temporal is away (restarting, say), keep trying for up to ``OUTAGE_SECONDS``:
    the function's code runs on meanwhile, and its nested calls should not fail for that."""
    deadline = time.monotonic() + OUTAGE_SECONDS
    pause = 0.5
    while True:
        try:
            response: Message = await method(request, retry=retry, timeout=timedelta(seconds=seconds))
            return response
        except RPCError as exc:
            if not is_unreachable(exc) or time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 5.0)


def payloads_in(message: Message) -> Iterator[Payload]:
    """Every ``Payload`` in ``message`` (at any depth, in lists and maps), to be changed in place."""
    for field, value in message.ListFields():
        kind = field.message_type
        if kind is None:
            continue
        if kind.GetOptions().map_entry:
            value_kind = kind.fields_by_name["value"].message_type
            if value_kind is None:
                continue
            items = list(value.values())
            kind = value_kind
        else:
            items = [value] if isinstance(value, Message) else list(value)
        for item in items:
            if kind.full_name == Payload.DESCRIPTOR.full_name:
                yield item
            else:
                yield from payloads_in(item)


def contained(query: str) -> bool:
    """Whether ``query`` can be put in parentheses without reaching outside them: its parentheses balance
    outside string literals, which are closed, and outside them it holds nothing but names, numbers,
    comparisons, commas and dots (no comment, no statement separator)."""
    depth, quote, escaped = 0, "", False
    for char in query:
        if quote:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
            if depth < 0:
                return False
        elif not (char.isascii() and (char.isalnum() or char in _QUERY_CHARACTERS)):
            return False
    return depth == 0 and not quote
