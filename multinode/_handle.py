"""A handle on a registered function: start, inspect, await and cancel its invocations.

Every method has an ``*_async`` twin; the sync methods run the async ones on a private loop.
"""

from __future__ import annotations

import asyncio
import builtins
import inspect
import json
import logging
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from datetime import datetime, timezone
from typing import Any

from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError

from multinode import _context, _invocations, _serialization
from multinode._client import get_client, is_missing_search_attribute, is_not_found, rpc_boundary, run_sync
from multinode._limits import check_names
from multinode._listing import newest_first, quote_query_value
from multinode._protocol import (
    CHILD_STARTED_SIGNAL,
    INVOCATION_WORKFLOW,
    SA_FUNCTION,
    SA_PARENT,
    SA_PROJECT,
    SA_STATUS,
    SA_VERSION,
    FunctionRecord,
    FunctionTarget,
    InvocationInput,
    SlotRequest,
    VersionRecord,
    quota_workflow_id,
)
from multinode._registry import resolve_version
from multinode._settings import MultinodeSettings
from multinode._slots import queue_at_quota
from multinode._types import Invocation, InvocationIdsList
from multinode._vocabulary import InvocationStatus
from multinode.errors import AwaitTimeoutError, ConfigurationError, FunctionNotFoundError, ValidationError

MAP_QUEUE_CHUNK = 100
"""``.map`` starts its invocations in chunks of this many, queueing each chunk at the quota at once."""
LIST_PAGE_SIZE = 50
"""Invocation ids per page of ``.list``."""
MAP_START_CONCURRENCY = 32
"""How many invocations ``.map`` starts at once."""

_log = logging.getLogger(__name__)
_KIND = {kind.name: kind for kind in inspect._ParameterKind}


def _keyword(name: str) -> SearchAttributeKey[str]:
    return SearchAttributeKey.for_keyword(name)


class DeployedFunction:
    """A function of a registered project; see ``get_deployed_function``."""

    def __init__(
        self,
        project_name: str,
        function_name: str,
        version_id: str | None = None,
        *,
        settings: MultinodeSettings | None = None,
    ) -> None:
        check_names(project_name, function_name)
        self.project_name = project_name
        self.function_name = function_name
        self.version_id = version_id
        self._settings = settings

    def __repr__(self) -> str:
        version = self.version_id or "latest"
        return f"<DeployedFunction {self.project_name}.{self.function_name} @ {version}>"

    @property
    def settings(self) -> MultinodeSettings:
        if self._settings is None:
            self._settings = MultinodeSettings.from_env()
        return self._settings

    async def _client(self) -> Client:
        return await get_client(self.settings)

    async def _record(self, client: Client) -> tuple[VersionRecord, FunctionRecord]:
        version = await resolve_version(client, self.project_name, self.version_id)
        record = version.functions.get(self.function_name)
        if record is None:
            raise FunctionNotFoundError(
                self.project_name, version.version_id, self.function_name, list(version.functions)
            )
        return version, record

    # --- start --------------------------------------------------------------------------------

    @rpc_boundary
    async def start_async(self, *args: Any, **kwargs: Any) -> str:
        """Start an invocation and return its id; it runs in a container of its own."""
        client = await self._client()
        version, record = await self._record(client)
        invocation_id = await self._start_workflow(client, version, record, _encode_arguments(record, args, kwargs))
        await self._request_slots(client, record, [invocation_id])
        return invocation_id

    async def _start_workflow(
        self, client: Client, version: VersionRecord, record: FunctionRecord, payload: str
    ) -> str:
        """Start one invocation's workflow; it waits PENDING until ``_request_slots`` gets it a slot."""
        invocation_id = f"inv-{uuid.uuid4().hex}"
        running = _context.current()
        parent = running.invocation_id if running is not None else None
        pairs = [
            SearchAttributePair(_keyword(SA_PROJECT), self.project_name),
            SearchAttributePair(_keyword(SA_FUNCTION), self.function_name),
            SearchAttributePair(_keyword(SA_VERSION), version.version_id),
            SearchAttributePair(_keyword(SA_STATUS), InvocationStatus.PENDING),
        ]
        if parent:
            pairs.append(SearchAttributePair(_keyword(SA_PARENT), parent))
        try:
            await client.start_workflow(
                INVOCATION_WORKFLOW,
                InvocationInput.for_target(
                    FunctionTarget.of(self.project_name, version, record),
                    json.loads(payload),
                    parent_invocation_id=parent,
                    slot_requested=True,
                ),
                id=invocation_id,
                task_queue=self.settings.task_queue,
                search_attributes=TypedSearchAttributes(pairs),
                memo={
                    "project": self.project_name,
                    "function": self.function_name,
                    "version": version.version_id,
                    "parent_invocation": parent,
                },
                static_summary=f"{self.project_name}.{self.function_name} ({version.version_id})",
            )
        except RPCError as exc:
            if is_missing_search_attribute(exc):
                raise ConfigurationError(
                    f"The Temporal namespace lacks Multinode's search attributes ({exc}). Start `mn worker` once "
                    "against it (it registers them) or create them with `temporal operator search-attribute create`."
                ) from exc
            raise
        if parent:
            # The parent cancels its unfinished children when it is cancelled or times out.
            try:
                await client.get_workflow_handle(parent).signal(CHILD_STARTED_SIGNAL, invocation_id)
            except RPCError as exc:
                if not is_not_found(exc):
                    raise
        return invocation_id

    async def _request_slots(self, client: Client, record: FunctionRecord, invocation_ids: builtins.list[str]) -> None:
        """Queue the invocations at the function's quota, in this order, before ``.start`` returns: so an
        invocation started before another is served before it (first come, first served).

        Best effort: if this request fails, the invocation asks the quota itself 10 s later.
        """
        quota_id = quota_workflow_id(self.project_name, self.function_name)
        now = datetime.now(timezone.utc).isoformat()
        requests = [SlotRequest(i, now, record.config.max_concurrency) for i in invocation_ids]
        try:
            await queue_at_quota(client, quota_id, self.settings.task_queue, requests)
        except RPCError as exc:
            _log.warning("could not queue invocations at %s (they will ask themselves): %s", quota_id, exc)

    def start(self, *args: Any, **kwargs: Any) -> str:
        return run_sync(self.start_async(*args, **kwargs))

    # --- inspect ------------------------------------------------------------------------------

    @rpc_boundary
    async def get_async(self, invocation_id: str) -> Invocation:
        client = await self._client()
        state = await _invocations.read_state(client, invocation_id, self.settings)
        return _invocations.to_invocation(state)

    def get(self, invocation_id: str) -> Invocation:
        return run_sync(self.get_async(invocation_id))

    @rpc_boundary
    async def list_async(self, offset: str | None = None) -> InvocationIdsList:
        """The 50 newest invocation ids of this function (all versions), then the next page's offset.

        It reads Temporal's visibility store, which is eventually consistent: an invocation started a
        moment ago may not be listed yet (usually well under a second).
        """
        return await list_page(await self._client(), self.project_name, self.function_name, offset)

    def list(self, offset: str | None = None) -> InvocationIdsList:
        return run_sync(self.list_async(offset))

    @rpc_boundary
    async def logs_async(self, invocation_id: str, execution_id: str | None = None) -> str:
        """What the invocation's code printed (stdout and stderr), for its latest or a given execution."""
        client = await self._client()
        chunks = _invocations.log_chunks(client, self.settings, invocation_id, execution_id, follow=False)
        return "".join([chunk async for chunk in chunks])

    def logs(self, invocation_id: str, execution_id: str | None = None) -> str:
        return run_sync(self.logs_async(invocation_id, execution_id))

    # --- wait and cancel ----------------------------------------------------------------------

    @rpc_boundary
    async def await_result_async(self, invocation_id: str, timeout: float | None = None) -> Any:
        """Wait for the invocation to end; return its result or raise how it ended.

        ``timeout`` (seconds, None: no limit) bounds the wait; 0 returns at once if it has ended.
        """
        number = isinstance(timeout, (int, float)) and not isinstance(timeout, bool)
        if timeout is not None and not (number and timeout >= 0):
            raise ValidationError(f"timeout={timeout!r}: pass a number of seconds >= 0, or None to wait without limit.")
        client = await self._client()
        try:
            state = await _invocations.await_state(client, invocation_id, timeout, self.settings)
        except asyncio.TimeoutError as exc:
            raise AwaitTimeoutError(invocation_id, timeout or 0) from exc
        return _invocations.outcome(state)

    def await_result(self, invocation_id: str, timeout: float | None = None) -> Any:
        return run_sync(self.await_result_async(invocation_id, timeout))

    @rpc_boundary
    async def cancel_async(self, invocation_id: str) -> None:
        """Cancel the invocation; a no-op when it already ended or is being cancelled."""
        client = await self._client()
        description = await _invocations.describe(client, invocation_id)
        if description.status != WorkflowExecutionStatus.RUNNING:
            return
        try:
            await client.get_workflow_handle(invocation_id, run_id=description.run_id).cancel()
        except RPCError as exc:
            if not is_not_found(exc):  # it has just ended (or is gone)
                raise

    def cancel(self, invocation_id: str) -> None:
        run_sync(self.cancel_async(invocation_id))

    # --- conveniences -------------------------------------------------------------------------

    @rpc_boundary
    async def call_remote_async(self, *args: Any, **kwargs: Any) -> Any:
        invocation_id = await self.start_async(*args, **kwargs)
        return await self.await_result_async(invocation_id)

    def call_remote(self, *args: Any, **kwargs: Any) -> Any:
        return run_sync(self.call_remote_async(*args, **kwargs))

    async def starmap_async(self, iterable: Iterable[Iterable[Any]]) -> AsyncIterator[Any]:
        """Start one invocation per argument tuple; yield results in input order as each is ready."""
        ids = await self._start_many([tuple(item) for item in iterable])
        for invocation_id in ids:
            yield await self.await_result_async(invocation_id)

    async def map_async(self, iterable: Iterable[Any]) -> AsyncIterator[Any]:
        async for result in self.starmap_async((item,) for item in iterable):
            yield result

    def starmap(self, iterable: Iterable[Iterable[Any]]) -> Iterator[Any]:
        ids = run_sync(self._start_many([tuple(item) for item in iterable]))
        for invocation_id in ids:
            yield self.await_result(invocation_id)

    def map(self, iterable: Iterable[Any]) -> Iterator[Any]:
        return self.starmap((item,) for item in iterable)

    @rpc_boundary
    async def _start_many(self, arg_tuples: builtins.list[tuple[Any, ...]]) -> builtins.list[str]:
        """Resolve the version once and check every input before starting anything: a bad item must
        not leave the others running unseen."""
        client = await self._client()
        version, record = await self._record(client)
        payloads = [_encode_arguments(record, args, {}) for args in arg_tuples]
        gate = asyncio.Semaphore(MAP_START_CONCURRENCY)

        async def start_one(payload: str) -> str:
            async with gate:
                return await self._start_workflow(client, version, record, payload)

        started: builtins.list[str] = []
        # Chunk by chunk, each queued at the quota (in input order) as soon as it has started: items
        # run in input order, and none waits for the whole map to start first.
        for first in range(0, len(payloads), MAP_QUEUE_CHUNK):
            outcomes = await asyncio.gather(
                *(start_one(p) for p in payloads[first : first + MAP_QUEUE_CHUNK]), return_exceptions=True
            )
            chunk = [o for o in outcomes if isinstance(o, str)]
            started += chunk
            failure = next((o for o in outcomes if isinstance(o, BaseException)), None)
            if failure is not None:
                # All or nothing: what did start is cancelled rather than left running unseen.
                await asyncio.gather(*(self.cancel_async(i) for i in started), return_exceptions=True)
                raise failure
            await self._request_slots(client, record, chunk)
        return started


async def list_page(
    client: Client, project_name: str, function_name: str, offset: str | None, status: str | None = None
) -> InvocationIdsList:
    """One page of a function's invocation ids, newest first, optionally of one status only."""
    check_names(project_name, function_name)
    query = (
        f"WorkflowType = {quote_query_value(INVOCATION_WORKFLOW)} AND {SA_PROJECT} = {quote_query_value(project_name)} "
        f"AND {SA_FUNCTION} = {quote_query_value(function_name)}"
    )
    if status is not None:
        query += f" AND {SA_STATUS} = {quote_query_value(status)}"
    try:
        ids, next_offset = await newest_first(client, query, LIST_PAGE_SIZE, offset)
    except ValueError as exc:
        raise ValidationError(f"offset={offset!r} is not an offset returned by .list().") from exc
    return InvocationIdsList(invocation_ids=ids, offset=next_offset)


def _encode_arguments(record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    _check_arguments(record, args, kwargs)
    positional = [p.name for p in record.parameters if p.kind in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")]
    return _serialization.encode_arguments(args, kwargs, positional)


def _check_arguments(record: FunctionRecord, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    signature = inspect.Signature(
        [
            inspect.Parameter(p.name, _KIND[p.kind], default=None if p.has_default else inspect.Parameter.empty)
            for p in record.parameters
        ]
    )
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise ValidationError(f"The arguments do not match {record.name}{_render(signature)}: {exc}.") from exc


def _render(signature: inspect.Signature) -> str:
    return str(signature).replace("=None", "=...")
