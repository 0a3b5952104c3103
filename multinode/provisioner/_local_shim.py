"""Supervision of one local container process (stdlib only: the local provisioner's template imports it
in the version's environment, and the control plane reads process groups with it).

``supervise`` watches the container's process: it stops it when its memory goes over the function's
limit, kills whatever is left of its process group when it ends, and records how it ended in
``exit.json`` so that any control-plane worker, even one started after the worker that launched it
died, can tell why the container stopped.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

POLL_SECONDS = 0.1


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``: its children, theirs, and so on (from /proc)."""
    found: list[int] = []
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                children = Path(f"/proc/{current}/task/{tid}/children").read_text().split()
            except OSError:
                continue
            for child in children:
                found.append(int(child))
                stack.append(int(child))
    return found


def _rss_mib(pids: list[int]) -> float:
    total_kib = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
                    break
        except OSError:
            continue
    return total_kib / 1024


def group_members(pgid: int) -> list[int]:
    """Live processes of process group ``pgid`` (from /proc), the calling one excluded."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry))
    return members


def start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` (guards against pid reuse), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def write_json(path: Path, data: object) -> None:
    """Write ``path`` atomically (readers never see half of it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def write_exit(state_dir: Path, exit_code: int | None, reason: str) -> None:
    write_json(state_dir / "exit.json", {"exit_code": exit_code, "reason": reason})


def exit_reason(code: int) -> str:
    """How a process that ended with ``code`` (negative: killed by that signal) ended, in words."""
    if code < 0:
        return f"killed by signal {signal.Signals(-code).name}"
    if code == 0:
        return "exited normally"
    return f"exited with code {code}"


def kill_leftovers() -> None:
    """Processes the container started (in its process group) do not outlive it."""
    for pid in group_members(os.getpgid(0)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_child(pid: int) -> int | None:
    """The exit code of the child ``pid`` once it has ended (negative: killed by that signal); None if
    it was reaped already."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)


def supervise(child: int, state_dir: Path, memory_mib: float) -> int:
    """Watch ``child`` (a child of this process, in this process's group) until it ends; return the
    supervisor's own exit code. SIGTERM and SIGINT sent to the supervisor reach the child's tree."""

    def forward(signum: int, _frame: object) -> None:
        for pid in [child, *descendants(child)]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        try:
            pid, status = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:  # not expected: only this process reaps its child
            kill_leftovers()
            write_exit(state_dir, None, "the container's process disappeared")
            return 1
        if pid:
            code = os.waitstatus_to_exitcode(status)
            break
        tree = [child, *descendants(child)]
        rss = _rss_mib(tree)
        if rss > memory_mib:
            for member in tree:
                try:
                    os.kill(member, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_child(child)
            kill_leftovers()
            write_exit(
                state_dir,
                -signal.SIGKILL,
                f"out of memory: the process used {rss:.0f} MiB, over the function's memory limit of "
                f"{memory_mib:.0f} MiB; raise `memory` in @mn.function",
            )
            return 137
        time.sleep(POLL_SECONDS)
    kill_leftovers()
    write_exit(state_dir, code, exit_reason(code))
    return code if code >= 0 else 128 - code
