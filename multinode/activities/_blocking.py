"""Where the control-plane worker's blocking calls run: the provisioners' (boto3 is synchronous).

A thread pool of the worker's own (``MULTINODE_PROVISIONER_THREADS`` threads), not asyncio's default one:
that one has ``min(32, CPUs + 4)`` threads, 5 on the Terraform module's 0.5-vCPU worker task, and is
shared with whatever else in the process calls ``asyncio.to_thread``. Calls beyond the pool's threads
wait in its queue; an activity waiting for its call, queued or running, keeps heartbeating, so a
saturated pool delays calls without making Temporal think the worker died.

Nothing here sleeps in a pool thread on purpose: a provisioner method that waits for something (a
container to be gone) is split into calls that return at once, and the activity waits between them
with ``asyncio.sleep`` (see ``Provisioner.request_stop``). botocore's retries still back off inside a
call: that is what the threads beyond the CPU's share are for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from temporalio import activity

from multinode.errors import ConfigurationError

if TYPE_CHECKING:
    from multinode.provisioner.base import Provisioner

T = TypeVar("T")

ENV_PROVISIONER_THREADS = "MULTINODE_PROVISIONER_THREADS"
DEFAULT_PROVISIONER_THREADS = 32
"""Provisioner calls one control-plane worker makes at once. An AWS call mostly waits for the network
(RunTask answers in a few hundred ms), and signing and parsing it takes a few ms of CPU: 32 threads
keep ~100 calls a second in flight, about what half a vCPU can sign and parse and more than ECS's
account-wide RunTask rate lets through. More threads only queue in botocore's rate limiter."""
MAX_PROVISIONER_THREADS = 256
"""Most threads ``MULTINODE_PROVISIONER_THREADS`` may ask for (each boto3 client keeps one HTTP
connection per thread: see ``_fargate_aws.MAX_POOL_CONNECTIONS``)."""
HEARTBEAT_SECONDS = 5.0
"""How often an activity waiting for a blocking call heartbeats (a watch is retried elsewhere after
30 s without one; the SDK sends at most one heartbeat per 80% of that to the server)."""


@dataclass(frozen=True)
class ExecutorLoad:
    """How busy the executor is, for the health check and the benchmark."""

    threads: int
    running: int
    """Calls running in a thread now."""
    queued: int
    """Calls waiting for a thread now."""
    peak_queued: int
    """The most calls that waited at once since the executor started (or ``reset_peak``)."""
    oldest_queued_seconds: float
    """How long the call that has waited longest has been waiting (0 with none waiting)."""

    def as_dict(self) -> dict[str, float]:
        figures = {f.name: float(getattr(self, f.name)) for f in dataclasses.fields(self)}
        figures["oldest_queued_seconds"] = round(self.oldest_queued_seconds, 3)
        return figures


class BlockingExecutor:
    """A thread pool that counts what waits for it."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="multinode-blocking")
        self._lock = threading.Lock()
        self._numbers = itertools.count()
        self._queued: dict[int, float] = {}
        """call number -> when it was submitted (time.monotonic), in submission order."""
        self._running = 0
        self._peak_queued = 0

    def submit(self, fn: Callable[..., T], *args: Any) -> concurrent.futures.Future[T]:
        number = next(self._numbers)

        def call() -> T:
            with self._lock:
                self._queued.pop(number, None)
                self._running += 1
            try:
                return fn(*args)
            finally:
                with self._lock:
                    self._running -= 1

        with self._lock:
            self._queued[number] = time.monotonic()
            self._peak_queued = max(self._peak_queued, len(self._queued))
        try:
            future = self._pool.submit(call)
        except BaseException:
            self._dequeue(number)
            raise
        future.add_done_callback(lambda _: self._dequeue(number))  # cancelled before it ran
        return future

    async def run(self, fn: Callable[..., T], *args: Any, heartbeat_details: Sequence[Any] = ()) -> T:
        """``fn(*args)`` in a pool thread; inside an activity, heartbeat until it returns. Cancelled while
        still queued, the call never runs."""
        future = asyncio.wrap_future(self.submit(fn, *args))
        try:
            while True:
                done, _ = await asyncio.wait({future}, timeout=HEARTBEAT_SECONDS)
                if done:
                    return future.result()
                _heartbeat(heartbeat_details)
        except asyncio.CancelledError:
            future.cancel()  # a queued call is dropped; a running one finishes in its thread
            raise

    def load(self) -> ExecutorLoad:
        now = time.monotonic()
        with self._lock:
            oldest = next(iter(self._queued.values()), now)
            return ExecutorLoad(self.threads, self._running, len(self._queued), self._peak_queued, now - oldest)

    def reset_peak(self) -> None:
        with self._lock:
            self._peak_queued = len(self._queued)

    def shutdown(self) -> None:
        """Stop taking calls; calls already submitted still run."""
        self._pool.shutdown(wait=False)

    def _dequeue(self, number: int) -> None:
        with self._lock:
            self._queued.pop(number, None)


def _heartbeat(details: Sequence[Any]) -> None:
    if activity.in_activity() and not activity.info().is_local:  # a local activity has no heartbeat
        activity.heartbeat(*details)


def provisioner_threads(environ: Mapping[str, str] | None = None) -> int:
    """``MULTINODE_PROVISIONER_THREADS`` (default :data:`DEFAULT_PROVISIONER_THREADS`)."""
    env = os.environ if environ is None else environ
    raw = (env.get(ENV_PROVISIONER_THREADS) or "").strip()
    if not raw:
        return DEFAULT_PROVISIONER_THREADS
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PROVISIONER_THREADS:
        raise ConfigurationError(
            f"{ENV_PROVISIONER_THREADS}={raw!r} is not a number of threads from 1 to {MAX_PROVISIONER_THREADS}; "
            f"unset it for the default of {DEFAULT_PROVISIONER_THREADS}."
        )
    return int(raw)


_executor: BlockingExecutor | None = None
_executor_lock = threading.Lock()


def blocking_executor() -> BlockingExecutor:
    """The process's executor for blocking calls, made at first use with ``MULTINODE_PROVISIONER_THREADS``
    threads (``configure_blocking`` sizes it explicitly)."""
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = BlockingExecutor(provisioner_threads())
        return _executor


def configure_blocking(threads: int) -> BlockingExecutor:
    """Size the process's executor (a control-plane worker does at start); calls already submitted to a
    previous one still run there."""
    global _executor
    with _executor_lock:
        previous = _executor
        if previous is not None and previous.threads == threads:
            return previous
        _executor = BlockingExecutor(threads)
        if previous is not None:
            previous.shutdown()
        return _executor


async def run_blocking(fn: Callable[..., T], *args: Any, heartbeat_details: Sequence[Any] = ()) -> T:
    """``fn(*args)`` on the process's executor for blocking calls. Inside an activity, the activity
    heartbeats (with ``heartbeat_details``) every :data:`HEARTBEAT_SECONDS` while the call waits for a
    thread or runs."""
    return await blocking_executor().run(fn, *args, heartbeat_details=heartbeat_details)


async def stop_until_gone(provisioner: Provisioner, handle_id: str) -> None:
    """Stop a container and return once it is gone: ``request_stop`` on the executor every
    ``stop_poll_interval``, waiting in between on the loop (not in a thread) and heartbeating."""
    while not await run_blocking(provisioner.request_stop, handle_id):
        _heartbeat(())
        await asyncio.sleep(provisioner.stop_poll_interval)
