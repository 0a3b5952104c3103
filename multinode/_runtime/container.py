"""Entry point of a container: ``python -m multinode._runtime.container`` in the tasks folder.

The user function runs on the main thread; a Temporal worker on a thread of its own polls the
container's task queue for the one ``run_function`` activity of this execution (and for
``interrupt``). Running user code on the main thread is what lets an interruption reach it anywhere:
the worker thread sends SIGUSR1 to the main thread, whose handler raises ``InvocationCancelledError``
or ``InvocationTimedOutError``. A signal handler interrupts ``time.sleep`` and blocking system calls
(PEP 475) and runs between any two bytecodes of a busy loop, where the SDK's own mechanism for
thread activities (``PyThreadState_SetAsyncExc``) cannot interrupt a sleep at all.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import math
import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.worker import Worker

from multinode import _serialization
from multinode._client import connect
from multinode._protocol import (
    ENV_CONTAINER_TASK_QUEUE,
    ENV_INVOCATION_ID,
    INTERRUPT_ACTIVITY,
    PROGRESS_SIGNAL,
    RUN_FUNCTION_ACTIVITY,
    InterruptInput,
    ProgressUpdate,
    RunInput,
    RunOutput,
)
from multinode._runtime.loader import load_tasks
from multinode._sdk import Function
from multinode._settings import MultinodeSettings
from multinode.errors import InvocationCancelledError, InvocationTimedOutError, PayloadError

HEARTBEAT_INTERVAL_SECONDS = 0.25
"""How often the run activity looks at its timers and the progress pacer."""
LIVENESS_HEARTBEAT_SECONDS = 1.0
"""Without new progress, how often the run activity heartbeats (which also brings back cancellation).
A new yield heartbeats at once: the SDK sends a heartbeat immediately when none went out within
HEARTBEAT_SEND_INTERVAL, so sparse yields reach `.get()` in milliseconds and dense ones every 0.5 s."""
HEARTBEAT_SEND_INTERVAL = timedelta(milliseconds=500)
"""How often the SDK sends the latest heartbeat (with the latest progress) to the server."""
PROGRESS_ENCODE_INTERVAL_SECONDS = 0.2
"""Yields closer together than this are coalesced: only the latest is pickled."""
MIN_PROGRESS_SIGNAL_INTERVAL_SECONDS = 1.0
"""Progress reaches the workflow (its ``progress`` query) at most this often."""
IDLE_TIMEOUT_SECONDS = 600.0
"""A container that receives no execution for this long exits (its workflow has moved on)."""
INTERRUPT_SIGNAL = signal.SIGUSR1


def _log(message: str) -> None:
    print(f"[multinode] {message}", file=sys.stderr, flush=True)


@dataclass
class _Call:
    input: RunInput
    on_done: Any
    result: Any = None
    error: ApplicationError | None = None
    done: threading.Event = field(default_factory=threading.Event)


class Runner:
    """Main-thread side: runs the one call, and raises interruptions inside it."""

    def __init__(self) -> None:
        self._calls: queue.Queue[_Call | None] = queue.Queue()
        self._lock = threading.RLock()  # re-entrant: the signal handler runs on the main thread
        self._in_user_code = False
        self._pending: BaseException | None = None
        self.interrupted: str | None = None
        self.functions: dict[str, Function] = {}
        self.load_error: BaseException | None = None
        self.progress: str | None = None
        self.progress_version = 0
        self.progress_waker: Callable[[], None] | None = None
        """Called (on the main thread) after each new progress value."""
        self._progress_at = 0.0
        self._timeout_seconds = 0.0
        signal.signal(INTERRUPT_SIGNAL, self._on_signal)

    # --- any thread ---------------------------------------------------------------------------

    def submit(self, call: _Call) -> None:
        self._calls.put(call)

    def stop_waiting(self) -> None:
        self._calls.put(None)

    def interrupt(self, reason: str) -> None:
        with self._lock:
            if self.interrupted is not None:
                return
            self.interrupted = reason
            _log(f"interrupting the function: {reason.replace('_', ' ')}")
            if reason == "cancelled":
                self._pending = InvocationCancelledError()
            else:
                self._pending = InvocationTimedOutError(f"The invocation timed out after {self._timeout_seconds:g} s.")
            if self._in_user_code:
                signal.pthread_kill(threading.main_thread().ident or 0, INTERRUPT_SIGNAL)

    # --- main thread --------------------------------------------------------------------------

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        with self._lock:
            if self._in_user_code and self._pending is not None:
                error, self._pending = self._pending, None
                raise error

    def next_call(self, timeout: float) -> _Call | None:
        try:
            return self._calls.get(timeout=timeout)
        except queue.Empty:
            return None

    def execute(self, call: _Call) -> None:
        self._timeout_seconds = call.input.timeout_seconds
        try:
            call.result = self._run_user_code(call.input)
        except BaseException as exc:  # noqa: BLE001 - everything the user code raises is reported
            call.error = self._error_for(exc)
        if call.error is None and self.interrupted is not None:
            call.error = self._error_for(None)
        call.done.set()
        call.on_done()

    def _run_user_code(self, run: RunInput) -> Any:
        if self.load_error is not None:
            raise self.load_error
        function = self.functions.get(run.function_name)
        if function is None:
            raise LookupError(f"main.py declares no function {run.function_name!r}")
        positional = _serialization.positional_names(function.fn)
        args, kwargs = _serialization.decode_arguments(json.dumps(run.args), positional)
        os.environ[ENV_INVOCATION_ID] = run.invocation_id  # nested invocations record their parent
        with self._lock:
            self._in_user_code = True
            if self._pending is not None:  # interrupted before the code even started
                error, self._pending = self._pending, None
                self._in_user_code = False
                raise error
        try:
            value = function.fn(*args, **kwargs)
            if inspect.isgenerator(value):
                value = self._drain(value)
        finally:
            with self._lock:
                self._in_user_code = False
        return json.loads(_serialization.encode(value, what="The result"))

    def _drain(self, generator: Any) -> Any:
        last = None
        interruption: BaseException | None = None
        while True:
            try:
                item = generator.throw(interruption) if interruption is not None else next(generator)
            except StopIteration:
                break
            interruption = None
            last = item
            now = time.monotonic()
            if now - self._progress_at >= PROGRESS_ENCODE_INTERVAL_SECONDS:
                try:
                    self._publish_progress(last)
                except (InvocationCancelledError, InvocationTimedOutError) as exc:
                    # Raised while pickling the progress, outside the generator: raise it inside, so
                    # its own except and finally blocks run.
                    interruption = exc
                self._progress_at = now
        self._publish_progress(last)
        return last

    def _publish_progress(self, value: Any) -> None:
        try:
            self.progress = _serialization.encode(value, what="A yielded value")
            self.progress_version += 1
            if self.progress_waker is not None:
                self.progress_waker()
        except PayloadError as exc:
            _log(f"progress not published: {exc}")

    def _error_for(self, exc: BaseException | None) -> ApplicationError:
        if self.interrupted == "timed_out":
            return ApplicationError(
                f"The invocation timed out after {self._timeout_seconds:g} s.",
                type="InvocationTimedOutError",
                non_retryable=True,
            )
        if self.interrupted == "cancelled":
            return ApplicationError(
                "The invocation was cancelled.", type="InvocationCancelledError", non_retryable=True
            )
        assert exc is not None
        cls = type(exc)
        name = (
            cls.__qualname__ if cls.__module__ in ("builtins", "__main__") else f"{cls.__module__}.{cls.__qualname__}"
        )
        if isinstance(exc, PayloadError):
            name = "PayloadError"
        tb = "".join(traceback.format_exception(exc))
        return ApplicationError(str(exc), tb, type=name, non_retryable=True)


class _ProgressPacer:
    """Sends the latest progress to the workflow as signals, within the execution's budget.

    The gap between two signals is at least ``MIN_PROGRESS_SIGNAL_INTERVAL_SECONDS`` and stretches
    so that, at the current payload size, the budget lasts until the execution's deadline.
    """

    def __init__(self, client: Client, run: RunInput) -> None:
        self._client = client
        self._run = run
        self._count_left = run.progress_signal_budget
        self._bytes_left = run.progress_bytes_budget
        self._deadline = time.monotonic() + run.timeout_seconds
        self._next_at = 0.0
        self._sent_version = 0
        self._task: asyncio.Task[None] | None = None

    def offer(self, progress: str | None, version: int) -> None:
        now = time.monotonic()
        if progress is None or version == self._sent_version or now < self._next_at:
            return
        if (self._task is not None and not self._task.done()) or self._count_left <= 0:
            return
        size = len(progress)
        if size > self._bytes_left:
            return
        self._sent_version = version
        self._count_left -= 1
        self._bytes_left -= size
        left = max(self._deadline - now, 0.0)
        self._next_at = now + max(
            MIN_PROGRESS_SIGNAL_INTERVAL_SECONDS,
            left / max(self._count_left, 1),
            left * size / max(self._bytes_left, 1),
        )
        update = ProgressUpdate(execution_id=self._run.execution_id, value=json.loads(progress))
        self._task = asyncio.create_task(self._send(update))

    async def _send(self, update: ProgressUpdate) -> None:
        try:
            await self._client.get_workflow_handle(self._run.invocation_id).signal(PROGRESS_SIGNAL, update)
        except Exception as exc:  # progress is best effort; the result is not
            _log(f"progress signal not sent: {exc}")


class ContainerActivities:
    """Worker-thread side: the activities this container's worker runs."""

    def __init__(self, runner: Runner, client: Client, finished: threading.Event) -> None:
        self.runner = runner
        self.client = client
        self.finished = finished

    @activity.defn(name=RUN_FUNCTION_ACTIVITY)
    async def run_function(self, run: RunInput) -> RunOutput:
        loop = asyncio.get_running_loop()
        done = asyncio.Event()
        woken = asyncio.Event()  # the call ended, or a new progress value

        def wake(also_done: bool = False) -> None:
            if also_done:
                done.set()
            woken.set()

        call = _Call(run, on_done=lambda: loop.call_soon_threadsafe(wake, True))

        def wake_from_main_thread() -> None:
            loop.call_soon_threadsafe(wake)

        self.runner.progress_waker = wake_from_main_thread
        self.runner.submit(call)
        timers = [loop.call_later(run.timeout_seconds, self.runner.interrupt, "timed_out")]
        pacer = _ProgressPacer(self.client, run)
        beat_at, beat_version = -math.inf, -1
        try:
            while not done.is_set():
                woken.clear()
                progress, version = self.runner.progress, self.runner.progress_version
                if version != beat_version or loop.time() - beat_at >= LIVENESS_HEARTBEAT_SECONDS:
                    activity.heartbeat(*([progress] if progress is not None else []))
                    beat_at, beat_version = loop.time(), version
                pacer.offer(progress, version)
                if self.runner.interrupted == "timed_out" and not timers[1:]:
                    timers.append(loop.call_later(run.grace_period_seconds, wake, True))
                try:
                    await asyncio.wait_for(woken.wait(), HEARTBEAT_INTERVAL_SECONDS)
                except asyncio.TimeoutError:
                    pass
        except asyncio.CancelledError:
            self.runner.interrupt("cancelled")
            deadline = loop.time() + run.grace_period_seconds
            while not done.is_set() and loop.time() < deadline:
                # Keep heartbeating: the grace period may be longer than the heartbeat timeout.
                activity.heartbeat()
                try:
                    await asyncio.wait_for(asyncio.shield(done.wait()), HEARTBEAT_INTERVAL_SECONDS)
                except asyncio.TimeoutError:
                    pass
            if not done.is_set():
                _log("the function did not stop within the grace period")
            raise
        finally:
            for timer in timers:
                timer.cancel()
            self.finished.set()
        if not call.done.is_set():
            _log("the function did not stop within the grace period after its timeout")
            raise self.runner._error_for(None)
        if call.error is not None:
            raise call.error
        return RunOutput(result=call.result)

    @activity.defn(name=INTERRUPT_ACTIVITY)
    async def interrupt(self, request: InterruptInput) -> None:
        self.runner.interrupt(request.reason)


async def _serve(runner: Runner, finished: threading.Event, settings: MultinodeSettings, task_queue: str) -> None:
    client = await connect(settings)
    activities = ContainerActivities(runner, client, finished)
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
        await asyncio.to_thread(finished.wait)


@dataclass
class ContainerWorker:
    """The container's Temporal worker, polling on a thread of its own, and the runner it feeds."""

    runner: Runner
    thread: threading.Thread
    failure: list[BaseException]
    """The worker's error, once it has failed (it could not connect, or stopped polling)."""


def start_worker(task_queue: str) -> ContainerWorker:
    """Connect to Temporal and poll ``task_queue`` on a thread; the function runs on this one (the main thread)."""
    settings = MultinodeSettings.from_env()
    runner = Runner()
    finished = threading.Event()
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            asyncio.run(_serve(runner, finished, settings, task_queue))
        except BaseException as exc:  # noqa: BLE001 - reported below, then the container exits
            failure.append(exc)
            runner.stop_waiting()

    thread = threading.Thread(target=serve, name="multinode-worker", daemon=True)
    thread.start()
    return ContainerWorker(runner, thread, failure)


def run_execution(worker: ContainerWorker, code_dir: Path) -> NoReturn:
    """Import the tasks folder, run the one execution that arrives, and end the process."""
    runner = worker.runner
    try:
        runner.functions = load_tasks(code_dir)
    except BaseException as exc:  # noqa: BLE001 - reported as the execution's error
        runner.load_error = exc
    call = runner.next_call(IDLE_TIMEOUT_SECONDS)
    if call is not None:
        runner.execute(call)
        worker.thread.join(timeout=60)
    code = 0
    if worker.failure:
        _log(f"the container's worker failed: {worker.failure[0]}")
        code = 2
    elif call is None:
        _log(f"no execution arrived within {IDLE_TIMEOUT_SECONDS:g} s; exiting")
        code = 3
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # threads the user code started must not keep the container alive


def main() -> None:
    worker = start_worker(os.environ[ENV_CONTAINER_TASK_QUEUE])
    run_execution(worker, Path.cwd())


if __name__ == "__main__":
    main()
