"""Reading an execution's output for the log reader workflow's query (see docs/architecture.md, "Logs").

A query handler cannot take the provisioner as an argument, and its workflow code knows only its
task queue: each control-plane worker registers what serves its log reads here, by task queue, for as
long as it runs (several workers with different queues may live in one process).

A read runs in a thread of its own, and the query waits for it at most ``READ_WAIT_SECONDS``: the
SDK fails a workflow activation that blocks for 2 s, and a CloudWatch call (with botocore's retries)
can take longer. A read still running then is answered as pending and kept, so that the SDK's next
query for the same chunk picks its result up.

A chunk the provisioner returns (up to 1 MB of output) is answered in parts of at most
``MAX_ANSWER_TEXT_BYTES`` once JSON-encoded: Temporal's JSON escapes every non-ASCII character (up to
12 bytes for one character), the server refuses a query answer over 2 MB and the SDK warns about every
payload over 512 KiB. The offset of a part (``multinode-part:CHARS:OFFSET``) says how many characters
of the chunk read at the provisioner's OFFSET were already answered; the chunk is kept until its last
part is answered, and read again if it is no longer kept (parts are cut greedily from the chunk's
start, so a chunk read again, longer by what was written since, is cut the same way).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeoutError
from contextlib import contextmanager
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from multinode._protocol import READ_LOGS_ACTIVITY, LogsChunk, LogsRequest
from multinode._vocabulary import ErrorType
from multinode.activities.provisioning import pick_provisioner
from multinode.provisioner import Provisioner

READ_WAIT_SECONDS = 1.0
"""Longest one query waits for a read (well under the SDK's 2 s deadlock detection)."""
READ_THREADS = 4
"""Reads one worker runs at once; more wait for a thread (and are answered as pending meanwhile)."""
MAX_KEPT_READS = 32
"""Reads still running, or with parts not yet answered, that one worker keeps (each up to a 1 MB chunk)."""
KEPT_READ_SECONDS = 120.0
"""A read nobody asked for again within this long is forgotten (its reader gave up)."""
MAX_ANSWER_TEXT_BYTES = 448 * 1024
"""Largest text of one answer, JSON-encoded (under the SDK's 512 KiB payload warning)."""
PART_OFFSET_PREFIX = "multinode-part:"

_Key = tuple[str, str, str | None]


class LogReads:
    """The log reads of one control-plane worker: its provisioners, and reads still running."""

    def __init__(self, provisioners: dict[str, Provisioner]) -> None:
        self._provisioners = provisioners
        self._executor = ThreadPoolExecutor(max_workers=READ_THREADS, thread_name_prefix="multinode-logs")
        self._lock = threading.Lock()
        self._reads: dict[_Key, tuple[float, Future[tuple[str, str]]]] = {}

    def read(self, request: LogsRequest, wait_seconds: float = READ_WAIT_SECONDS) -> LogsChunk:
        provisioner = self._provisioners.get(request.provisioner)
        if provisioner is None:
            raise ApplicationError(
                f"This control-plane worker has no {request.provisioner!r} provisioner; start one with "
                f"MULTINODE_PROVISIONER={request.provisioner}.",
                type=ErrorType.PROVISIONER_MISSING,
            )
        handle = request.container_handle or request.execution_id
        base, skip = _parse_offset(request.offset)
        key: _Key = (request.provisioner, handle, base)
        future = self._future(key, provisioner, handle, base)
        try:
            text, offset = future.result(timeout=wait_seconds)
        except FutureTimeoutError:
            return LogsChunk(text="", offset=request.offset or "", pending=True)
        except Exception as exc:
            self._forget(key, future)
            raise ApplicationError(
                f"Reading the output of execution {request.execution_id} failed: {type(exc).__name__}: {exc}",
                type=ErrorType.LOG_READ,
            ) from exc
        rest = text[skip:]
        part = fitting_prefix(rest, MAX_ANSWER_TEXT_BYTES)
        if len(part) < len(rest):
            return LogsChunk(text=part, offset=f"{PART_OFFSET_PREFIX}{skip + len(part)}:{base or ''}")
        self._forget(key, future)
        return LogsChunk(text=part, offset=offset)

    def _future(self, key: _Key, provisioner: Provisioner, handle: str, offset: str | None) -> Future[tuple[str, str]]:
        now = time.monotonic()
        with self._lock:
            kept = self._reads.get(key)
            if kept is not None:
                return kept[1]
            for old, (since, _) in list(self._reads.items()):
                if now - since > KEPT_READ_SECONDS:
                    del self._reads[old]
            if len(self._reads) >= MAX_KEPT_READS:
                raise ApplicationError(
                    f"This control-plane worker already has {MAX_KEPT_READS} log reads in flight; try again later.",
                    type=ErrorType.LOG_READ,
                )
            future = self._executor.submit(provisioner.logs, handle, offset)
            self._reads[key] = (now, future)
            return future

    def _forget(self, key: _Key, future: Future[tuple[str, str]]) -> None:
        with self._lock:
            kept = self._reads.get(key)
            if kept is not None and kept[1] is future:
                del self._reads[key]

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _parse_offset(offset: str | None) -> tuple[str | None, int]:
    """The provisioner's offset of the chunk, and how many of its characters were already answered."""
    if offset and offset.startswith(PART_OFFSET_PREFIX):
        chars, _, base = offset[len(PART_OFFSET_PREFIX) :].partition(":")
        if chars.isdigit():
            return base or None, int(chars)
    return offset or None, 0


def fitting_prefix(text: str, max_bytes: int) -> str:
    """The longest start of ``text`` whose JSON encoding (as Temporal's converter writes it, every
    non-ASCII character escaped) takes at most ``max_bytes``."""
    if len(json.dumps(text)) <= max_bytes:
        return text
    low, high = 0, min(len(text), max_bytes)  # a character takes at least one byte
    while low < high:
        middle = (low + high + 1) // 2
        if len(json.dumps(text[:middle])) <= max_bytes:
            low = middle
        else:
            high = middle - 1
    return text[:low]


_lock = threading.Lock()
_serving: dict[str, list[LogReads]] = {}


@contextmanager
def serving(task_queue: str, provisioners: dict[str, Provisioner]) -> Iterator[LogReads]:
    """Serve log reads of ``task_queue`` with these provisioners while the block runs."""
    reads = LogReads(provisioners)
    with _lock:
        _serving.setdefault(task_queue, []).append(reads)
    try:
        yield reads
    finally:
        with _lock:
            stack = _serving.get(task_queue, [])
            if reads in stack:
                stack.remove(reads)
            if not stack:
                _serving.pop(task_queue, None)
        reads.close()


def reads_for(task_queue: str) -> LogReads:
    """What serves log reads of ``task_queue`` in this process (the worker started last)."""
    with _lock:
        stack = _serving.get(task_queue)
        reads = stack[-1] if stack else None
    if reads is None:
        raise ApplicationError(
            f"This control-plane worker does not serve log reads of task queue {task_queue!r} (it was not "
            "started by `mn dev` or `mn worker`).",
            type=ErrorType.LOG_READ,
        )
    return reads


class LogActivities:
    """The activity of the log workflows that earlier versions started (a chunk per workflow); kept so
    that their histories still run. Reads now go through the log reader's query (above)."""

    def __init__(self, provisioners: dict[str, Provisioner]) -> None:
        self._provisioners = provisioners

    @activity.defn(name=READ_LOGS_ACTIVITY)
    async def read_logs(self, request: LogsRequest) -> LogsChunk:
        provisioner = pick_provisioner(self._provisioners, request.provisioner)
        handle = request.container_handle or request.execution_id
        text, offset = await asyncio.to_thread(provisioner.logs, handle, request.offset)
        return LogsChunk(text=text, offset=offset)

    def all(self) -> list[Callable[..., Any]]:
        return [self.read_logs]
