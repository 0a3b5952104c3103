"""Fork server of the local provisioner: ``ENV_PYTHON -m multinode._runtime.template LOG_FILE``.

A container process that starts from nothing pays a Python start-up and the import of temporalio
(about half a second) before it can poll for its execution. A template pays that once per environment
and forks every container from itself, with a few of them started ahead of time (the pool):

    template           single-threaded; imports the runtime, never user code, never connects to Temporal,
      │                never reads the credentials (a descriptor it passes on to the agents)
      └─ supervisor    one per container (a pool unit): leads its own session, is the subreaper of
          │            everything below, and does what the local shim did (memory limit, exit.json, the
          │            tree killed at the end)
          └─ agent     reads the credentials, connects and polls the unit's own task queue at once, then
              │        waits for its execution (see agent.py)
              └─ user  forked by the agent before it read the credentials; runs the user's code

A unit serves one execution only. On its assignment the agent and the user process send their output
to the execution's ``output.log``; the user process takes the execution's environment, moves to the
tasks folder and imports ``main.py`` there (user code is imported fresh in every container, never in
the template), then runs the call its agent receives, as in ``python -m multinode._runtime.container``.

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
import socket
import sys
import time
import traceback
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from multinode._credentials import ENV_CREDENTIALS_FD, make_dumpable, make_undumpable, settings_with_secrets
from multinode._protocol import ENV_CONTAINER_TASK_QUEUE, ENV_INVOCATION_ID
from multinode._runtime import user
from multinode._runtime.agent import run_agent, start_agent
from multinode._settings import MultinodeSettings
from multinode.provisioner._local_shim import (
    become_subreaper,
    die_with_parent,
    exit_reason,
    kill_leftovers,
    kill_tree,
    send_signal,
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
    def __init__(self, requests: int, replies: int, pool_size: int, log_file: str, credentials: int) -> None:
        self._credentials = credentials
        """Descriptor of the Temporal profile: passed on to the units' agents, never read here."""
        self._requests = requests
        self._replies = replies
        self._pool_size = pool_size
        self._log_file = log_file
        self._pool: list[_Unit] = []
        self._assigned: set[int] = set()
        """Supervisors of assigned units (children of this process until they end)."""
        self._failures = 0
        self._refill_at = 0.0
        self._buffer = b""

    def serve(self) -> None:
        """Answer requests until the end of stdin; then (or on any error) kill the unassigned units."""
        last_request = time.monotonic()
        try:
            while True:
                self._reap()
                self._kill_orphans()
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
            self._assigned.add(unit.pid)
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
                code = _supervisor(read_end, task_queue, self._log_file, self._credentials)
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
            self._assigned.discard(pid)
            unit = next((u for u in self._pool if u.pid == pid), None)
            if unit is not None:  # died before being assigned: its output is in this log
                self._pool.remove(unit)
                os.close(unit.assignments)
                self._failures += 1
                backoff = min(0.5 * 2 ** (self._failures - 1), MAX_REFILL_BACKOFF_SECONDS)
                self._refill_at = time.monotonic() + backoff

    def _kill_orphans(self) -> None:
        """Kill the processes re-parented to this one (a subreaper) because their unit's supervisor was
        killed (user code can kill it): nothing an execution starts outlives its container."""
        known = self._assigned | {unit.pid for unit in self._pool}
        for pid in _children(os.getpid()):
            if pid not in known:
                kill_tree(pid)
                send_signal(pid, signal.SIGKILL)

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


def _supervisor(assignments: int, task_queue: str, log_file: str, credentials: int) -> int:
    """A unit's supervisor: start its container, hand it its assignment, then supervise it."""
    become_subreaper()  # orphans below this unit (setsid, double forks) are re-parented to it, not to init
    os.setsid()
    _name_process("mn-supervisor")
    read_end, write_end = os.pipe()
    supervisor = os.getpid()
    child = os.fork()
    if child == 0:
        try:
            die_with_parent(supervisor)
            os.close(write_end)
            os.close(assignments)
            _name_process("mn-agent")
            _container(read_end, task_queue, credentials)
        except BaseException:  # noqa: BLE001 - a forked child never returns into the supervisor
            traceback.print_exc()
        finally:
            os._exit(1)
    os.close(read_end)
    os.close(credentials)
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


def _container(assignments: int, task_queue: str, credentials: int) -> NoReturn:
    """A unit's container: its agent (this process) polls the unit's queue at once, then waits for the
    execution assigned to it; the user code's process, forked first, waits for the agent's word."""
    agent_end, user_end = socket.socketpair()
    agent_pid = os.getpid()
    user_pid = os.fork()
    if user_pid == 0:
        try:
            die_with_parent(agent_pid)
            # Forked before the agent reads the credentials, and without the descriptor that holds
            # them: nothing in this process's memory, environment or descriptors grants Temporal access.
            for fd in (assignments, credentials):
                os.close(fd)
            agent_end.close()
            # The template is not dumpable (it holds the credentials' descriptor); this process holds
            # nothing secret, and its supervisor must read its memory use (/proc/PID/smaps_rollup).
            make_dumpable()
            _name_process("mn-user")
            user.serve(user_end)
        except BaseException:  # noqa: BLE001 - a forked child never returns into the agent
            traceback.print_exc()
        finally:
            os._exit(1)
    user_end.close()
    settings = settings_with_secrets(_read_all(credentials).decode(), os.environ)
    os.close(credentials)
    make_undumpable()
    agent = start_agent(task_queue, settings, user_pid, agent_end)
    line = _read_line(assignments, lambda: bool(agent.failure) or agent.link.ended.is_set())
    if line is None:
        if agent.failure:
            print(f"[multinode] a pre-started container's worker failed: {agent.failure[0]}", file=sys.stderr)
        elif agent.link.ended.is_set():
            print(f"[multinode] a pre-started container's user process {agent.link.exited}", file=sys.stderr)
        agent.link.kill()
        os._exit(2 if agent.failure else 0)  # without failure: the supervisor is gone, nothing will be assigned
    os.close(assignments)
    assignment = json.loads(line)
    state_dir = Path(assignment["state_dir"])
    log_file = str(state_dir / "output.log")
    log = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    env = {**assignment["env"], ENV_LOG_FILE: log_file, ENV_CONTAINER_TASK_QUEUE: task_queue}
    if env.get(ENV_INVOCATION_ID):  # without one (a provisioner test), the gate refuses every call
        agent.assign(env[ENV_INVOCATION_ID])
    agent.link.send({"op": "assign", "env": env, "code_dir": assignment["code_dir"], "log_file": log_file})
    run_agent(agent)


def _children(pid: int) -> list[int]:
    """The live children of ``pid`` (from /proc)."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            found.extend(int(child) for child in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
        except OSError:
            continue
    return [child for child in found if start_ticks(child) is not None]


def _read_all(fd: int) -> bytes:
    size = os.fstat(fd).st_size
    data = b""
    while len(data) < size:
        chunk = os.pread(fd, size - len(data), len(data))
        if not chunk:
            break
        data += chunk
    return data


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
    # Its descriptors (the credentials') and memory are not readable by other processes of this user,
    # user code included; and orphans of a unit whose supervisor was killed come here, to be killed.
    make_undumpable()
    become_subreaper()
    pool_size = MultinodeSettings.from_env().local_pool_size
    credentials = int(os.environ.pop(ENV_CREDENTIALS_FD))
    threads = len(os.listdir("/proc/self/task"))
    if threads > 1:  # forking copies only the calling thread: state another thread holds is lost
        print(f"[multinode] warning: the template runs {threads} threads before forking", file=sys.stderr)
    gc.collect()
    gc.freeze()  # the imported modules' objects stay shared with every container (no copy on write)
    Template(requests, replies, pool_size, log_file, credentials).serve()
    os._exit(0)  # nothing to flush (unbuffered), and no interpreter finalization to wait for


if __name__ == "__main__":
    main()
