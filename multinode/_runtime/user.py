"""The process that runs user code: it holds no Temporal credentials and talks only to its agent.

The user function runs on the main thread; a reader thread takes the agent's frames (the call, an
interruption, answers to Temporal calls made by the SDK). Running user code on the main thread is what
lets an interruption reach it anywhere: the reader thread sends SIGUSR1 to the main thread, whose
handler raises ``InvocationCancelledError`` or ``InvocationTimedOutError``. A signal handler
interrupts ``time.sleep`` and blocking system calls (PEP 475) and runs between any two bytecodes of a
busy loop.

Whatever the user's code does, this process ends with one ``done`` frame or not at all; the agent
treats its end without one as the attempt's failure, at once.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import queue
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from multinode import _client, _context, _serialization
from multinode._context import RunningInvocation
from multinode._protocol import ENV_PROJECT, ENV_VERSION
from multinode._runtime.agent_client import AgentServiceClient, agent_client
from multinode._runtime.channel import Channel, ChannelClosed
from multinode._runtime.loader import load_tasks
from multinode._sdk import Function
from multinode._settings import MultinodeSettings
from multinode._vocabulary import ErrorType, InterruptReason, user_error_type
from multinode.errors import InvocationCancelledError, InvocationTimedOutError, MultinodeError, PayloadError

PROGRESS_ENCODE_INTERVAL_SECONDS = 0.2
"""Yields closer together than this are coalesced: only the latest is pickled."""
IDLE_TIMEOUT_SECONDS = 600.0
"""A process that receives no call for this long exits (its agent has gone or moved on)."""
MAX_ERROR_MESSAGE_CHARS = 10_000
"""An error's message is cut to this length (the rest is in the container's log)."""
MAX_TRACEBACK_CHARS = 100_000
"""An error's traceback keeps its last this many characters."""
INTERRUPT_SIGNAL = signal.SIGUSR1


def _log(message: str) -> None:
    print(f"[multinode] {message}", file=sys.stderr, flush=True)


class Runner:
    """Main-thread side: runs the one call, and raises interruptions inside it."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._calls: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self._lock = threading.RLock()  # re-entrant: the signal handler runs on the main thread
        self._in_user_code = False
        self._pending: BaseException | None = None
        self.interrupted: str | None = None
        self.functions: dict[str, Function[..., Any, Any]] = {}
        self.load_error: BaseException | None = None
        self._progress_at = 0.0
        self._timeout_seconds = 0.0
        signal.signal(INTERRUPT_SIGNAL, self._on_signal)

    # --- reader thread ------------------------------------------------------------------------

    def submit(self, run: dict[str, Any] | None) -> None:
        self._calls.put(run)

    def interrupt(self, reason: str, timeout_seconds: float) -> None:
        with self._lock:
            if self.interrupted is not None:
                return
            self.interrupted = reason
            if reason == InterruptReason.CANCELLED:
                self._pending = InvocationCancelledError()
            else:
                self._pending = InvocationTimedOutError(f"The invocation timed out after {timeout_seconds:g} s.")
            if self._in_user_code:
                signal.pthread_kill(threading.main_thread().ident or 0, INTERRUPT_SIGNAL)

    # --- main thread --------------------------------------------------------------------------

    def _on_signal(self, _signum: int, _frame: Any) -> None:
        with self._lock:
            if self._in_user_code and self._pending is not None:
                error, self._pending = self._pending, None
                raise error

    def next_call(self, timeout: float) -> dict[str, Any] | None:
        try:
            return self._calls.get(timeout=timeout)
        except queue.Empty:
            return None

    def execute(self, run: dict[str, Any]) -> None:
        """Run the call and send its outcome: the result's JSON, or what can be said about the error."""
        self._timeout_seconds = float(run.get("timeout_seconds", 0))
        try:
            result = self._run_user_code(run)
            self._channel.send({"op": "done"}, result.encode())
        except BaseException as exc:  # noqa: BLE001 - everything the user code raises is reported
            self._channel.send({"op": "done", "error": describe_error(exc)})

    def _run_user_code(self, run: dict[str, Any]) -> str:
        if self.load_error is not None:
            raise self.load_error
        function = self.functions.get(run["function_name"])
        if function is None:
            raise LookupError(f"main.py declares no function {run['function_name']!r}")
        positional = _serialization.positional_names(function.fn)
        args, kwargs = _serialization.decode_arguments(json.dumps(run["args"]), positional)
        # Nested invocations record their parent, and run this version when of this project.
        _context.enter(
            RunningInvocation(run["invocation_id"], os.environ.get(ENV_PROJECT), os.environ.get(ENV_VERSION))
        )
        pending = self._take_pending()
        if pending is not None:  # interrupted before the code even started
            raise pending
        value = self._in_user_code_run(lambda: function.fn(*args, **kwargs))
        if inspect.isgenerator(value):
            value = self._drain(value)
        return _serialization.encode(value, what="The result")

    def _take_pending(self) -> BaseException | None:
        with self._lock:
            error, self._pending = self._pending, None
            return error

    def _in_user_code_run(self, step: Callable[[], Any], throw: Callable[[BaseException], Any] | None = None) -> Any:
        """Run ``step`` (user code) where an interruption raises. An interruption that came while our own
        code ran (where none is raised: a signal there would cut a frame in half) is raised first, or
        handed to ``throw`` (a generator's, so that it is raised at its yield)."""
        with self._lock:
            self._in_user_code = True
            pending, self._pending = self._pending, None
        try:
            if pending is not None:
                if throw is None:
                    raise pending
                return throw(pending)
            return step()
        finally:
            with self._lock:
                self._in_user_code = False

    def _drain(self, generator: Any) -> Any:
        last = None
        error: BaseException | None = None
        while True:
            # An error of ours (a value too large to show) is raised inside the generator, at its yield,
            # so that its own except and finally blocks run, and the invocation fails now, not at its end.
            try:
                if error is not None:
                    thrown, error = error, None
                    item = self._in_user_code_run(functools.partial(generator.throw, thrown))
                else:
                    item = self._in_user_code_run(functools.partial(next, generator), generator.throw)
            except StopIteration:
                break
            last = item
            now = time.monotonic()
            if now - self._progress_at >= PROGRESS_ENCODE_INTERVAL_SECONDS:
                error = self._publish_progress(last)
                self._progress_at = now
        error = self._publish_progress(last) or self._take_pending()
        if error is not None:
            raise error
        return last

    def _publish_progress(self, value: Any) -> BaseException | None:
        try:
            progress = _serialization.encode(value, what="A yielded value")
        except PayloadError as exc:
            _log(f"a yielded value cannot be shown: {exc}")
            return exc
        self._channel.send({"op": "progress"}, progress.encode())
        return None


def describe_error(exc: BaseException) -> dict[str, str]:
    """Type, message and traceback of ``exc``, whatever its ``__str__``, ``__repr__`` or class do."""
    try:
        return _describe_error(exc)
    except BaseException:  # noqa: BLE001 - an exception hostile enough to break even this: say what we can
        return {"type": ErrorType.EXCEPTION, "message": "<an exception that could not be described>", "traceback": ""}


def _describe_error(exc: BaseException) -> dict[str, str]:
    cls = type(exc)
    try:
        module, qualname = str(cls.__module__), str(cls.__qualname__)
        name = qualname if module in ("builtins", "__main__") else f"{module}.{qualname}"
    except BaseException:  # noqa: BLE001 - a class with broken attributes still has a name
        name = type.__repr__(cls)
    if cls is PayloadError or PayloadError in cls.__mro__:  # not isinstance: __class__ may be a trap
        name = ErrorType.PAYLOAD
    else:
        name = user_error_type(name)  # only the agent may report an agent-only type (it knows it interrupted)
    message = _safe_text(lambda: str(exc), None)
    if message is None:
        message = _safe_text(lambda: f"(str() failed) {exc!r}", None) or f"<{name}: str() and repr() failed>"
    tb = _safe_text(lambda: "".join(traceback.format_exception(exc)), None)
    if tb is None:
        frames = _safe_text(lambda: "".join(traceback.format_tb(exc.__traceback__)), None) or ""
        tb = f"Traceback (most recent call last):\n{frames}{name}: {message}\n"
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + f"... ({len(message):,} characters in all)"
    if len(tb) > MAX_TRACEBACK_CHARS:
        tb = "...\n" + tb[-MAX_TRACEBACK_CHARS:]
    return {"type": name, "message": message, "traceback": tb}


def _safe_text(make: Callable[[], object], fallback: str | None) -> str | None:
    try:
        text = make()
        return text if isinstance(text, str) else fallback
    except BaseException:  # noqa: BLE001 - user code may raise anything from __str__ or __repr__
        return fallback


def _read_frames(
    channel: Channel,
    runner: Runner,
    service: AgentServiceClient,
    assignments: queue.Queue[Any],
    dotenvs: queue.Queue[tuple[dict[str, Any], bytes]],
) -> None:
    """The reader thread: dispatch the agent's frames until the channel ends, then end the process."""
    timeout_seconds = 0.0
    try:
        while True:
            header, body = channel.receive()
            op = header["op"]
            if op == "assign":
                assignments.put(header)
            elif op == "run":
                timeout_seconds = float(header["input"].get("timeout_seconds", 0))
                runner.submit(header["input"])
            elif op == "interrupt":
                runner.interrupt(str(header["reason"]), timeout_seconds)
            elif op in ("rpc_result", "rpc_error"):
                service.answer(header, body)
            elif op == "env":
                dotenvs.put((header, body))
    except ChannelClosed as exc:
        service.close(f"the container's agent is gone ({exc})")
    finally:
        # Without its agent nothing this process does can be reported: end it, and what it started.
        os._exit(70)


def serve(
    sock: socket.socket, assignment: dict[str, Any] | None = None, *, dotenv_from_agent: bool = False
) -> NoReturn:
    """Run the user-code side of a container over ``sock``: wait for the assignment (unless given),
    import the tasks folder, run the one call that arrives, send its outcome and end the process.

    With ``dotenv_from_agent`` (a fargate image: it holds no ``.env``), the version's ``.env`` is asked
    of the agent and loaded before ``main.py`` is imported (``dotenv.py``)."""
    channel = Channel(sock)
    runner = Runner(channel)
    service = AgentServiceClient(channel)
    assignments: queue.Queue[Any] = queue.Queue()
    dotenvs: queue.Queue[tuple[dict[str, Any], bytes]] = queue.Queue()
    threading.Thread(
        target=_read_frames, args=(channel, runner, service, assignments, dotenvs), name="multinode-agent", daemon=True
    ).start()
    if assignment is None:
        assignment = assignments.get()
        _take_assignment(assignment)
    settings = MultinodeSettings.from_env()
    _client.use_container_client(agent_client(service, settings.temporal_namespace))
    code_dir = Path(assignment["code_dir"])
    dotenv = None
    if dotenv_from_agent:
        channel.send({"op": "env"})
        header, body = dotenvs.get()  # the agent answers once connected (or ends, and so does this process)
        if header.get("error"):
            runner.load_error = MultinodeError(
                f"The version's .env could not be read from the project registry: {header['error']}"
            )
        dotenv = body.decode("utf-8", errors="replace")
    if runner.load_error is None:
        try:
            runner.functions = load_tasks(code_dir, dotenv=dotenv)
        except BaseException as exc:  # noqa: BLE001 - reported as the call's error
            runner.load_error = exc
    run = runner.next_call(IDLE_TIMEOUT_SECONDS)
    code = 3
    if run is not None:
        runner.execute(run)
        code = 0
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # threads the user code started must not keep the process alive


def _take_assignment(assignment: dict[str, Any]) -> None:
    """A pre-started process becomes this execution's: its output, environment and folder."""
    log = os.open(assignment["log_file"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.update(assignment["env"])
    os.chdir(assignment["code_dir"])


def main() -> None:
    """``python -m multinode._runtime.user FD``: started by an agent (``container.py``, an image's entry
    point) with the channel's socket as FD, in the tasks folder, with an environment that holds no
    credentials. The image holds no ``.env``: the agent delivers it."""
    try:
        sock = socket.socket(fileno=int(sys.argv[1]))
        serve(sock, {"code_dir": os.getcwd()}, dotenv_from_agent=True)
    finally:
        os._exit(1)  # serve ends the process itself; this only if our own code failed


if __name__ == "__main__":
    main()
