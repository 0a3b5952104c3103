"""Fork server of the local provisioner: ``ENV_PYTHON -m multinode._runtime.template LOG_FILE``.

A container process that starts from nothing pays a Python start-up and the import of temporalio
(about half a second) before it can poll for its execution. A template pays that once per environment
and forks every container from itself, with a few of them started ahead of time (the pool):

    template           single-threaded; imports the runtime, never user code, never connects to Temporal
      └─ supervisor    one per container (a pool unit): leads its own session and process group, and
          │            does what the local shim did (memory limit, exit.json, the group killed at the end)
          └─ container connects and polls the unit's own task queue at once, then waits for its execution

A unit serves one execution only. On its assignment the container sends its output to the
execution's ``output.log``, takes the execution's environment, moves to the tasks folder and imports
``main.py`` there (user code is imported fresh in every container, never in the template), then goes
on exactly like ``python -m multinode._runtime.container``.

The provisioner talks to the template over its stdin and stdout, one JSON line per request and per
reply::

    {"op": "start", "execution_id", "state_dir", "memory_mib", "code_dir", "env"}
        -> {"pid": supervisor, "start_ticks": ..., "task_queue": the unit's queue}, also written to
           STATE_DIR/state.json before the reply, or {"error": "..."}

At the end of its stdin (the control plane stopped or died) the template kills the units not yet
assigned and exits; assigned containers run on.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from multinode._protocol import ENV_CONTAINER_TASK_QUEUE
from multinode._runtime import container
from multinode._settings import MultinodeSettings
from multinode.provisioner._local_shim import (
    exit_reason,
    kill_leftovers,
    start_ticks,
    supervise,
    wait_child,
    write_exit,
    write_json,
)

POOL_QUEUE_PREFIX = "multinode-container:pool-"
"""Task queue of a pre-started container: this prefix and a random suffix."""
LOOP_SECONDS = 0.2
"""How often an idle template (or a waiting unit) checks on its children."""
IDLE_EXIT_SECONDS = 600.0
"""A template that receives no request for this long ends with its pool (the next start begins another)."""
MAX_REFILL_BACKOFF_SECONDS = 30.0
"""Longest wait before replacing pool units that died unassigned (Temporal unreachable, say)."""
ENV_LOG_FILE = "MULTINODE_LOG_FILE"


@dataclass
class _Unit:
    pid: int
    """The supervisor's pid, also its process group."""
    task_queue: str
    assignments: int
    """Write end of the pipe that carries the unit's assignment to its supervisor."""


class Template:
    def __init__(self, requests: int, replies: int, pool_size: int, log_file: str) -> None:
        self._requests = requests
        self._replies = replies
        self._pool_size = pool_size
        self._log_file = log_file
        self._pool: list[_Unit] = []
        self._failures = 0
        self._refill_at = 0.0
        self._buffer = b""

    def serve(self) -> None:
        """Answer requests until the end of stdin; then (or on any error) kill the unassigned units."""
        last_request = time.monotonic()
        try:
            while True:
                self._reap()
                if time.monotonic() >= self._refill_at:
                    self._refill()
                readable, _, _ = select.select([self._requests], [], [], LOOP_SECONDS)
                if not readable:
                    if time.monotonic() - last_request > IDLE_EXIT_SECONDS:
                        return  # its connected, polling pool units are not kept for ever
                    continue
                last_request = time.monotonic()
                chunk = os.read(self._requests, 1 << 16)
                if not chunk:
                    return
                self._buffer += chunk
                while b"\n" in self._buffer:
                    line, self._buffer = self._buffer.split(b"\n", 1)
                    self._answer(line)
        finally:
            self._shutdown()

    def _answer(self, line: bytes) -> None:
        try:
            request = json.loads(line)
            if request.get("op") != "start":
                raise ValueError(f"unknown request {request.get('op')!r}")
            reply = self._assign(request)
        except Exception as exc:  # the provisioner reports it
            traceback.print_exc()
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        _write_all(self._replies, json.dumps(reply).encode() + b"\n")
        # Only now, not to delay the reply: replace the unit just used.
        self._failures = 0
        self._refill_at = 0.0
        self._refill()

    def _assign(self, request: dict[str, Any]) -> dict[str, Any]:
        self._reap()  # units whose container died are not handed out
        message = json.dumps(request).encode() + b"\n"
        for _ in range(len(self._pool) + 1):
            unit = self._pool.pop(0) if self._pool else self._fork_unit()
            try:
                _write_all(unit.assignments, message)
            except BrokenPipeError:  # its supervisor has just ended (its container died unassigned)
                continue
            finally:
                os.close(unit.assignments)
            state = {"pid": unit.pid, "start_ticks": start_ticks(unit.pid), "task_queue": unit.task_queue}
            # Written before the reply: a provision retried after the control plane died here finds it.
            write_json(Path(request["state_dir"]) / "state.json", state)
            return state
        raise RuntimeError(f"a freshly started container ended at once; see {self._log_file}")

    def _refill(self) -> None:
        while len(self._pool) < self._pool_size:
            self._pool.append(self._fork_unit())

    def _fork_unit(self) -> _Unit:
        task_queue = f"{POOL_QUEUE_PREFIX}{uuid.uuid4().hex}"
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                # Only the template may hold these: the provisioner and the other units must see the
                # end of their pipes when the template ends.
                for fd in [write_end, self._requests, self._replies, *(u.assignments for u in self._pool)]:
                    os.close(fd)
                code = _supervisor(read_end, task_queue, self._log_file)
            except BaseException:  # noqa: BLE001 - a forked child never returns into the template
                traceback.print_exc()
            finally:
                os._exit(code)
        os.close(read_end)
        return _Unit(pid, task_queue, write_end)

    def _reap(self) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            unit = next((u for u in self._pool if u.pid == pid), None)
            if unit is not None:  # died before being assigned: its output is in this log
                self._pool.remove(unit)
                os.close(unit.assignments)
                self._failures += 1
                backoff = min(0.5 * 2 ** (self._failures - 1), MAX_REFILL_BACKOFF_SECONDS)
                self._refill_at = time.monotonic() + backoff

    def _shutdown(self) -> None:
        for unit in self._pool:
            # The group (supervisor and container), or the supervisor alone if it has not made it yet
            # (then it has no container either).
            for kill in (os.killpg, os.kill):
                try:
                    kill(unit.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            os.close(unit.assignments)
        for unit in self._pool:
            wait_child(unit.pid)
        self._pool.clear()


def _supervisor(assignments: int, task_queue: str, log_file: str) -> int:
    """A unit's supervisor: start its container, hand it its assignment, then supervise it."""
    os.setsid()
    _name_process("mn-supervisor")
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.close(write_end)
            os.close(assignments)
            _name_process("mn-container")
            _container(read_end, task_queue)
        except BaseException:  # noqa: BLE001 - a forked child never returns into the supervisor
            traceback.print_exc()
        finally:
            os._exit(1)
    os.close(read_end)
    ended: list[int | None] = []

    def child_ended() -> bool:
        if not ended:
            pid, status = os.waitpid(child, os.WNOHANG)
            if pid:
                ended.append(os.waitstatus_to_exitcode(status))
        return bool(ended)

    line = _read_line(assignments, child_ended)
    os.close(assignments)
    if line is None:  # the template ended, or the container died: either way this unit is done
        kill_leftovers()
        if not ended:
            wait_child(child)
        elif ended[0]:
            print(f"[multinode] a pre-started container {exit_reason(ended[0])}", file=sys.stderr)
        return 0
    assignment = json.loads(line)
    state_dir = Path(assignment["state_dir"])
    if not child_ended():
        (state_dir / "child.pid").write_text(str(child))
        try:
            _write_all(write_end, line + b"\n")
        except BrokenPipeError:
            ended.append(wait_child(child))
    if ended:  # a race the template mostly avoids: the container died just before its assignment
        kill_leftovers()
        how = exit_reason(ended[0]) if ended[0] is not None else "ended"
        write_exit(
            state_dir, ended[0], f"the pre-started container {how} before its execution was assigned; see {log_file}"
        )
        return 1
    os.close(write_end)
    return supervise(child, state_dir, float(assignment["memory_mib"]))


def _container(assignments: int, task_queue: str) -> NoReturn:
    """A unit's container: poll the unit's queue at once, then wait for the execution assigned to it."""
    os.environ[ENV_CONTAINER_TASK_QUEUE] = task_queue
    worker = container.start_worker(task_queue)
    line = _read_line(assignments, lambda: bool(worker.failure))
    if line is None:
        if worker.failure:
            print(f"[multinode] a pre-started container's worker failed: {worker.failure[0]}", file=sys.stderr)
            os._exit(2)
        os._exit(0)  # the supervisor is gone: nothing will be assigned
    os.close(assignments)
    assignment = json.loads(line)
    state_dir = Path(assignment["state_dir"])
    log = os.open(state_dir / "output.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.environ.update(assignment["env"])
    os.environ[ENV_LOG_FILE] = str(state_dir / "output.log")
    os.environ[ENV_CONTAINER_TASK_QUEUE] = task_queue
    os.chdir(assignment["code_dir"])
    container.run_execution(worker, Path(assignment["code_dir"]))


def _read_line(fd: int, stop: Callable[[], bool]) -> bytes | None:
    """The first line read from ``fd``; None at its end or once ``stop()`` is true and nothing is left to
    read (a line already written is read even then: the template has handed this unit out)."""
    buffer = b""
    while b"\n" not in buffer:
        readable, _, _ = select.select([fd], [], [], LOOP_SECONDS)
        if not readable:
            if not stop():
                continue
            readable, _, _ = select.select([fd], [], [], 0)
            if not readable:
                return None
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return None
        buffer += chunk
    return buffer.split(b"\n", 1)[0]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _name_process(name: str) -> None:
    """Name this process as ``ps -o comm`` and ``top`` show it (up to 15 characters)."""
    try:
        Path("/proc/self/comm").write_text(name)
    except OSError:
        pass


def main() -> None:
    log_file = sys.argv[1] if len(sys.argv) > 1 else "the template's log"
    # Requests and replies get private descriptors; fds 0, 1 and 2, which every unit inherits, become
    # /dev/null and the template's log.
    requests, replies = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    cwd = os.getcwd()  # an empty folder, put first on sys.path by `-m`: the tasks folder takes its place
    sys.path[:] = [p for p in sys.path if p not in ("", cwd)]
    _name_process("mn-template")
    pool_size = MultinodeSettings.from_env().local_pool_size
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:  # forking copies only the calling thread: state another thread holds is lost
        print(f"[multinode] warning: the template runs {threads} threads before forking", file=sys.stderr)
    gc.collect()
    gc.freeze()  # the imported modules' objects stay shared with every container (no copy on write)
    Template(requests, replies, pool_size, log_file).serve()
    os._exit(0)  # nothing to flush (unbuffered), and no interpreter finalization to wait for


if __name__ == "__main__":
    main()
