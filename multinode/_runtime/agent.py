"""A container's agent: the Temporal worker that runs the one ``run_function`` activity of an execution,
for a child process that runs the user's code and holds no Temporal credentials (``user.py``).

The agent sends the call to the child, heartbeats (with the latest progress) while it runs, raises
cancellation and timeouts inside it (a frame, turned into a signal on the child's main thread), relays
the Temporal calls the child's SDK makes through the gate (``gate.py``), and reports the outcome. If the
child ends without an outcome (it crashed, called ``os._exit``, or its main thread died), the attempt
fails at once with how it ended.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import queue
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any, NoReturn

from temporalio import activity
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from multinode._client import connect
from multinode._protocol import (
    INTERRUPT_ACTIVITY,
    RUN_FUNCTION_ACTIVITY,
    InterruptInput,
    RunInput,
    RunOutput,
)
from multinode._runtime.channel import Channel, ChannelClosed
from multinode._runtime.dotenv import DotenvRelay
from multinode._runtime.gate import Gate
from multinode._runtime.pacer import ProgressPacer
from multinode._serialization import MAX_PAYLOAD_CHARS
from multinode._settings import MultinodeSettings
from multinode._vocabulary import ErrorType, InterruptReason, user_error_type
from multinode.errors import TemporalUnreachableError

HEARTBEAT_INTERVAL_SECONDS = 0.25
"""How often the run activity looks at its timers and the progress pacer."""
LIVENESS_HEARTBEAT_SECONDS = 1.0
"""Without new progress, how often the run activity heartbeats (which also brings back cancellation).
A new yield heartbeats at once: the SDK sends a heartbeat immediately when none went out within
HEARTBEAT_SEND_INTERVAL, so sparse yields reach `.get()` in milliseconds and dense ones every 0.5 s."""
HEARTBEAT_SEND_INTERVAL = timedelta(milliseconds=500)
"""How often the SDK sends the latest heartbeat (with the latest progress) to the server."""
IDLE_TIMEOUT_SECONDS = 600.0
"""A container that receives no execution for this long exits (its workflow has moved on)."""
MAX_CALLS_IN_FLIGHT = 64
"""Temporal calls of the user process relayed at once; more are answered RESOURCE_EXHAUSTED at once."""
MAX_QUEUED_BYTES = 64 * 1024 * 1024
"""Frames waiting for the user process to read them beyond which it is killed (it stopped reading)."""
MAX_ERROR_CHARS = 200_000
"""Longest message or traceback reported (the user process cuts them shorter; a raw frame may not)."""
HOLD_SECONDS = 60.0
"""After the execution's deadline (timeout and grace period), how long the agent still holds its outcome
for a workflow that may ask again, unless deprovisioning ends it first (as it normally does at once)."""
CONNECT_RETRY_MAX_SECONDS = 5.0
"""Longest pause between two attempts of a container to connect to a Temporal that is away."""
HOLD_CHECK_SECONDS = 5.0
"""While holding its outcome, how often the agent checks whether its invocation's workflow has closed."""
REPORT_WAIT_SECONDS = 60.0
"""After the call, the least time the agent stays (holding the outcome) before exiting on its own."""


def log(message: str) -> None:
    print(f"[multinode] {message}", file=sys.stderr, flush=True)


def exit_description(code: int) -> str:
    if code < 0:
        return f"was killed by signal {signal.Signals(-code).name}"
    return f"exited with code {code}"


@dataclass
class UserLink:
    """The agent's side of the user process: what it sent, and how it ended."""

    pid: int
    channel: Channel
    invocation_id: str | None = None
    progress: str | None = None
    progress_version: int = 0
    outcome: tuple[dict[str, Any], bytes] | None = None
    exited: str | None = None
    """How the process ended, once it has (without an outcome, this is the attempt's error)."""
    gate: Gate | None = None
    client: Client | None = None
    control_queue: str = ""
    loop: asyncio.AbstractEventLoop | None = None
    waker: Any = None
    """Called on the agent's loop after each frame that changes the state above."""
    dotenv: DotenvRelay | None = None
    """Answers the user process's request for its fargate version's ``.env`` (``dotenv.py``)."""
    ended: threading.Event = field(default_factory=threading.Event)
    calls: threading.BoundedSemaphore = field(default_factory=lambda: threading.BoundedSemaphore(MAX_CALLS_IN_FLIGHT))
    reaped: bool = False
    _outbox: queue.SimpleQueue[tuple[dict[str, Any], bytes]] = field(default_factory=queue.SimpleQueue)
    _queued_bytes: int = 0
    _queue_lock: threading.Lock = field(default_factory=threading.Lock)

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        """Queue a frame for the user process; never blocks (a process that stops reading is killed once
        ``MAX_QUEUED_BYTES`` wait for it, instead of blocking the agent)."""
        with self._queue_lock:
            self._queued_bytes += len(body) + 256
            over = self._queued_bytes > MAX_QUEUED_BYTES
        if over:
            log("the function's process stopped reading what the agent sends; killing it")
            self.kill()
            return
        self._outbox.put((header, body))

    def write(self) -> None:
        """The writer thread: send queued frames until the channel ends."""
        while True:
            header, body = self._outbox.get()
            try:
                self.channel.send(header, body)
            except ChannelClosed:
                return  # the reader notices the end too, and reports it
            with self._queue_lock:
                self._queued_bytes -= len(body) + 256

    def kill(self) -> None:
        """SIGKILL the user process, unless it has been reaped already (its pid may be another's now)."""
        with self._queue_lock:
            if not self.reaped:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def read(self) -> None:
        """The reader thread: take the user process's frames until it ends; then record how it ended."""
        reason = ""
        try:
            while True:
                header, body = self.channel.receive()
                op = header["op"]
                if op == "progress" and len(body) <= MAX_PAYLOAD_CHARS:
                    self.progress = body.decode(errors="replace")
                    self.progress_version += 1
                elif op == "done" and self.outcome is None:
                    self.outcome = (header, body)
                elif op == "rpc":
                    if self.loop is not None and self.calls.acquire(blocking=False):
                        asyncio.run_coroutine_threadsafe(self._relay(header, body), self.loop)
                    else:
                        status = RPCStatusCode.RESOURCE_EXHAUSTED if self.loop else RPCStatusCode.UNAVAILABLE
                        busy = "too many Temporal calls at once" if self.loop else "the agent is not connected yet"
                        self.send({"op": "rpc_error", "id": header.get("id"), "status": int(status), "message": busy})
                    continue
                elif op == "env":
                    if self.dotenv is not None:
                        self.dotenv.requested()
                    continue
                self._wake()
        except ChannelClosed as exc:
            reason = str(exc)
        except Exception as exc:  # noqa: BLE001 - a frame the protocol does not have
            reason = f"it broke the channel's protocol ({type(exc).__name__})"
        self.exited = self._reap(reason)
        self.ended.set()
        self._wake()

    def _reap(self, reason: str) -> str:
        """Wait for the process to end (killing it if it closed the channel but runs on)."""
        deadline = time.monotonic() + 2.0
        how = f"closed its channel to the agent ({reason}) and was killed"
        try:
            while time.monotonic() < deadline:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
                if pid:
                    how = exit_description(os.waitstatus_to_exitcode(status))
                    break
                time.sleep(0.01)
            else:
                self.kill()
                os.waitpid(self.pid, 0)
        except ChildProcessError:
            how = "ended"
        with self._queue_lock:
            self.reaped = True
        return how

    def _wake(self) -> None:
        if self.loop is not None and self.waker is not None:
            self.loop.call_soon_threadsafe(self.waker)

    async def _relay(self, header: dict[str, Any], body: bytes) -> None:
        call_id = header.get("id")
        try:
            if self.gate is None and self.client is not None and self.invocation_id is not None:
                self.gate = Gate(self.client, self.control_queue, self.invocation_id)
            if self.gate is None:
                raise RPCError("the container has no execution yet", RPCStatusCode.UNAVAILABLE, b"")
            timeout = header.get("timeout")
            response = await self.gate.call(
                str(header.get("rpc")),
                body,
                bool(header.get("retry")),
                float(timeout) if isinstance(timeout, (int, float)) else None,
            )
            reply: dict[str, Any] = {"op": "rpc_result", "id": call_id}
        except RPCError as exc:
            reply = {"op": "rpc_error", "id": call_id, "status": int(exc.status), "message": exc.message}
            details = getattr(exc, "raw_grpc_status", b"")
            response = details if isinstance(details, bytes) else b""
        except Exception as exc:  # noqa: BLE001 - the user process gets an answer to every call
            reply = {"op": "rpc_error", "id": call_id, "status": int(RPCStatusCode.INTERNAL), "message": str(exc)}
            response = b""
        finally:
            self.calls.release()
        self.send(reply, response)


class AgentActivities:
    """The activities the container's worker runs."""

    def __init__(self, link: UserLink, client: Client, started: threading.Event, finished: threading.Event) -> None:
        self.link = link
        self.client = client
        self.started = started
        self.finished = finished
        self.interrupted: str | None = None
        self._run: RunInput | None = None
        self._wakers: set[asyncio.Event] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._grace_over = asyncio.Event()
        self.deadline = math.inf
        """Monotonic time until which the agent holds the outcome for a workflow that may ask again."""

    def _interrupt(self, reason: str) -> None:
        if self.interrupted is not None:
            return
        self.interrupted = reason
        log(f"interrupting the function: {reason.replace('_', ' ')}")
        self.link.send({"op": "interrupt", "reason": reason})

    def _interruption_error(self) -> ApplicationError:
        assert self._run is not None
        if self.interrupted == InterruptReason.TIMED_OUT:
            return ApplicationError(
                f"The invocation timed out after {self._run.timeout_seconds:g} s.",
                type=ErrorType.INVOCATION_TIMED_OUT,
                non_retryable=True,
            )
        return ApplicationError(
            "The invocation was cancelled.", type=ErrorType.INVOCATION_CANCELLED, non_retryable=True
        )

    def _outcome(self) -> RunOutput:
        if self.interrupted is not None:
            raise self._interruption_error()
        link = self.link
        if link.outcome is None:
            raise ApplicationError(
                f"The function's process {link.exited or 'ended'} before it returned or raised; see `mn logs`.",
                type=ErrorType.PROCESS_EXITED,
                non_retryable=True,
            )
        header, body = link.outcome
        error = header.get("error")
        if isinstance(error, dict):
            kind = user_error_type(str(error.get("type") or ErrorType.EXCEPTION))  # agent-only types: the agent's
            raise ApplicationError(
                str(error.get("message", ""))[:MAX_ERROR_CHARS],
                str(error.get("traceback", ""))[-MAX_ERROR_CHARS:],
                type=kind[:200],
                non_retryable=True,
            )
        if len(body) > MAX_PAYLOAD_CHARS:
            raise ApplicationError(
                f"The result takes {len(body):,} characters, over the limit of {MAX_PAYLOAD_CHARS:,}.",
                type=ErrorType.PAYLOAD,
                non_retryable=True,
            )
        try:
            return RunOutput(result=json.loads(body))
        except (ValueError, RecursionError) as exc:
            raise ApplicationError(
                "The function's process reported a result that is not JSON.", type=ErrorType.PAYLOAD, non_retryable=True
            ) from exc

    def _done(self) -> bool:
        return self.link.outcome is not None or self.link.exited is not None or self._grace_over.is_set()

    def _wake_all(self) -> None:
        for event in self._wakers:
            event.set()

    def _timed_out(self) -> None:
        assert self._run is not None
        self._interrupt(InterruptReason.TIMED_OUT)
        loop = asyncio.get_running_loop()
        self._timers.append(loop.call_later(self._run.grace_period_seconds, self._grace_over.set))
        self._timers.append(loop.call_later(self._run.grace_period_seconds, self._wake_all))

    @activity.defn(name=RUN_FUNCTION_ACTIVITY)
    async def run_function(self, run: RunInput) -> RunOutput:
        """Run the call; or, asked again for the same execution (the workflow lost track of this one while
        Temporal was away, and found the container still there), wait for the same call's outcome."""
        loop = asyncio.get_running_loop()
        link = self.link
        woken = asyncio.Event()
        self._wakers.add(woken)
        link.waker = self._wake_all
        if self._run is None:
            self._run = run
            self.started.set()
            self.deadline = time.monotonic() + run.timeout_seconds + run.grace_period_seconds + HOLD_SECONDS
            link.send({"op": "run", "input": asdict(run)})
            self._timers.append(loop.call_later(run.timeout_seconds, self._timed_out))
        elif run.execution_id != self._run.execution_id:
            raise ApplicationError("This container runs another execution.", type=ErrorType.WRONG_CONTAINER)
        else:
            log("the workflow asked for this execution again (Temporal was away when it was reported)")
        pacer = ProgressPacer(self.client, run)
        beat_at, beat_version = -math.inf, -1
        try:
            while not self._done():
                woken.clear()
                progress, version = link.progress, link.progress_version
                if version != beat_version or loop.time() - beat_at >= LIVENESS_HEARTBEAT_SECONDS:
                    activity.heartbeat(*([progress] if progress is not None else []))
                    beat_at, beat_version = loop.time(), version
                pacer.offer(progress, version)
                try:
                    await asyncio.wait_for(woken.wait(), HEARTBEAT_INTERVAL_SECONDS)
                except asyncio.TimeoutError:
                    pass
        except asyncio.CancelledError:
            self._interrupt(InterruptReason.CANCELLED)
            deadline = loop.time() + run.grace_period_seconds
            while not self._done() and loop.time() < deadline:
                # Keep heartbeating: the grace period may be longer than the heartbeat timeout.
                activity.heartbeat()
                woken.clear()
                try:
                    await asyncio.wait_for(asyncio.shield(woken.wait()), HEARTBEAT_INTERVAL_SECONDS)
                except asyncio.TimeoutError:
                    pass
            if not self._done():
                log("the function did not stop within the grace period")
            raise
        finally:
            self._wakers.discard(woken)
            if self._done() or not self._wakers:
                for timer in self._timers:
                    timer.cancel()
                self.finished.set()
        if self._grace_over.is_set() and link.outcome is None and link.exited is None:
            log("the function did not stop within the grace period after its timeout")
        return self._outcome()

    @activity.defn(name=INTERRUPT_ACTIVITY)
    async def interrupt(self, request: InterruptInput) -> None:
        self._interrupt(request.reason)


@dataclass
class Agent:
    """The container's Temporal worker, polling on a thread of its own, and its link to the user process."""

    link: UserLink
    thread: threading.Thread
    started: threading.Event
    """Set when the execution's call arrives."""
    finished: threading.Event
    """Set when the call has ended (the worker then reports it and stops)."""
    failure: list[BaseException]
    """The worker's error, once it has failed (it could not connect, or stopped polling)."""
    activities: AgentActivities | None = None

    def invocation_closed(self) -> bool:
        """Whether the invocation's workflow has closed; False when that cannot be told (Temporal away)."""
        link = self.link
        if link.loop is None or link.client is None or link.invocation_id is None:
            return False
        client, invocation_id = link.client, link.invocation_id

        async def closed() -> bool:
            description = await client.get_workflow_handle(invocation_id).describe()
            return description.status != WorkflowExecutionStatus.RUNNING

        try:
            return asyncio.run_coroutine_threadsafe(closed(), link.loop).result(timeout=HOLD_CHECK_SECONDS)
        except Exception:  # noqa: BLE001 - unreachable, or not found yet: keep holding
            return False

    def assign(self, invocation_id: str) -> None:
        self.link.invocation_id = invocation_id


async def _connect(settings: MultinodeSettings) -> Client:
    """Connect, waiting for Temporal if it is away (restarting, say): a container started meanwhile, or
    pre-started, must not fail its execution for that. Gives up after ``IDLE_TIMEOUT_SECONDS``."""
    deadline = time.monotonic() + IDLE_TIMEOUT_SECONDS
    pause = 0.5
    while True:
        try:
            return await connect(settings)
        except TemporalUnreachableError as exc:
            if time.monotonic() + pause > deadline:
                raise
            if pause == 0.5:
                log(f"waiting for Temporal: {exc}")
            await asyncio.sleep(pause)
            pause = min(pause * 2, CONNECT_RETRY_MAX_SECONDS)


async def _serve(agent: Agent, settings: MultinodeSettings, task_queue: str) -> None:
    client = await _connect(settings)
    link = agent.link
    link.client, link.control_queue = client, settings.task_queue
    link.loop = asyncio.get_running_loop()
    if link.dotenv is not None:
        link.dotenv.connected(client)
    activities = AgentActivities(link, client, agent.started, agent.finished)
    agent.activities = activities
    worker = Worker(
        client,
        task_queue=task_queue,
        activities=[activities.run_function, activities.interrupt],
        max_concurrent_activities=4,
        # Two polls in flight (the SDK's default is five): the run, then an interrupt. Every pre-started
        # container polls while it waits, so each extra poll is one more long poll the server holds.
        max_concurrent_activity_task_polls=2,
        # The run activity has returned when shutdown starts; leave time for its report to be sent.
        graceful_shutdown_timeout=timedelta(seconds=10),
        # Heartbeats (which carry the latest progress, and bring back cancellation) are sent at most
        # this often, instead of at 80% of the heartbeat timeout: fresh progress without a heartbeat
        # timeout so short that a C call holding the GIL would count as a dead container.
        max_heartbeat_throttle_interval=HEARTBEAT_SEND_INTERVAL,
    )
    async with worker:
        # Polls until the container ends (see run_agent): the workflow may ask for the execution again.
        await asyncio.Event().wait()


def start_agent(task_queue: str, settings: MultinodeSettings, user_pid: int, sock: socket.socket) -> Agent:
    """Connect to Temporal and poll ``task_queue`` on a thread; read the user process's frames on another."""
    link = UserLink(user_pid, Channel(sock))
    link.dotenv = DotenvRelay(link.send)
    agent = Agent(link, threading.Thread(), threading.Event(), threading.Event(), [])

    def serve() -> None:
        try:
            asyncio.run(_serve(agent, settings, task_queue))
        except BaseException as exc:  # noqa: BLE001 - reported by run_agent, then the container exits
            agent.failure.append(exc)
            agent.started.set()
            agent.finished.set()

    agent.thread = threading.Thread(target=serve, name="multinode-worker", daemon=True)
    agent.thread.start()
    threading.Thread(target=link.read, name="multinode-user", daemon=True).start()
    threading.Thread(target=link.write, name="multinode-user-writer", daemon=True).start()
    return agent


def run_agent(agent: Agent) -> NoReturn:
    """Wait for the execution's call and its report, then end the container (the user process too)."""
    code = 0
    if not agent.started.wait(IDLE_TIMEOUT_SECONDS):
        log(f"no execution arrived within {IDLE_TIMEOUT_SECONDS:g} s; exiting")
        code = 3
    else:
        agent.finished.wait()
        # Hold the outcome: if Temporal was away when it was reported, the workflow asks again once it is
        # back (and finds the container still there). Deprovisioning normally ends the container first.
        deadline = agent.activities.deadline if agent.activities is not None else 0.0
        hold_until = max(deadline if deadline < math.inf else 0.0, time.monotonic() + REPORT_WAIT_SECONDS)
        next_check = time.monotonic() + HOLD_CHECK_SECONDS
        while not agent.failure and time.monotonic() < hold_until:
            time.sleep(0.5)
            if time.monotonic() >= next_check:
                next_check = time.monotonic() + HOLD_CHECK_SECONDS
                if agent.invocation_closed():
                    break  # nobody will ask again (its workflow ended, or was terminated)
    if agent.failure:
        log(f"the container's worker failed: {agent.failure[0]}")
        code = 2
    agent.link.kill()
    agent.link.ended.wait(5)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
