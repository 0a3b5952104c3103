"""Supervision of one local container process (stdlib only, and ``multinode._vocabulary``, itself stdlib only:
the local provisioner's template imports it in the version's environment, and the control plane reads
process groups with it).

``supervise`` watches the container's process tree: it stops it when its memory (PSS) goes over the
function's limit or it holds too many processes, kills whatever is left of it when the container ends,
and records how it ended in ``exit.json`` so that any control-plane worker, even one started after the
worker that launched it died, can tell why the container stopped.

The supervisor is a child subreaper (``become_subreaper``): a process below it that leaves its session
(``setsid``) or whose parent ends (a double fork) is re-parented to the supervisor, not to init, so it
stays among the supervisor's ``descendants`` and dies with the container.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

from multinode._vocabulary import ExitReason

POLL_SECONDS = 0.1
PR_SET_CHILD_SUBREAPER = 36
"""prctl(2) option: orphans below the calling process are re-parented to it rather than to init."""
PR_SET_PDEATHSIG = 1
"""prctl(2) option: the signal the calling process gets when the thread that forked it ends."""
KILL_TIMEOUT_SECONDS = 10.0
"""Longest a clean-up keeps killing a tree (processes stuck in the kernel may not die at once)."""
DEFAULT_MAX_PROCESSES = 1024
"""Most processes a local container may hold (its own included) before it is killed as a runaway (a fork
bomb, say): counted, like the kernel's pids limit, with the zombies its processes have not reaped yet."""


def _load_prctl() -> Callable[..., int] | None:
    try:
        import ctypes

        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):  # not Linux, or no ctypes
        return None
    return prctl


_PRCTL = _load_prctl()  # at import: the template imports this module once, before it forks supervisors


def become_subreaper() -> bool:
    """Make the calling process a child subreaper (not inherited by its children); False where that is
    unavailable. Orphans below it (``setsid`` then the parent's end, double forks) then become its
    children: it must reap them (``reap_children``)."""
    if _PRCTL is None:
        return False
    return _PRCTL(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0


def die_with_parent(parent: int) -> None:
    """In a just-forked child: be killed (SIGKILL) when ``parent``, the process that forked it, ends.

    The subreapers above a container (its supervisor, the template) clean up after it only while they
    live; a supervisor killed after its template had ended would otherwise leave the container running
    unsupervised, re-parented to init. Call it from the forking thread's child only (the signal follows
    the forking *thread*). Exits at once if the parent has already gone (the race prctl(2) documents).
    """
    if _PRCTL is not None and _PRCTL(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0 and os.getppid() != parent:
        os._exit(1)


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


def _vmrss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _rss_mib(pids: list[int]) -> float:
    """Resident memory summed over ``pids``: pages shared copy-on-write count once per process, so this
    is at least ``_pss_mib`` (a cheap bound: PSS is only read when this goes over a limit)."""
    return sum(_vmrss_kib(pid) for pid in pids) / 1024


def _pss_mib(pids: list[int]) -> float:
    """Proportional set size summed over ``pids``: each page shared by n processes counts 1/n in each, so a
    forked worker's pages still shared with its parent count once in all, as the kernel charges them.
    A process whose ``smaps_rollup`` cannot be read counts its VmRSS."""
    total_kib = 0
    for pid in pids:
        pss = None
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    pss = int(line.split()[1])
                    break
        except (OSError, ValueError, IndexError):
            pass
        total_kib += _vmrss_kib(pid) if pss is None else pss
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


def _live(pids: list[int]) -> list[int]:
    """Those of ``pids`` that still exist and are not zombies."""
    live = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X"):
            live.append(pid)
    return live


def send_signal(pid: int, signum: int) -> None:
    """Send ``signum`` to ``pid``, if it is still there."""
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def reap_children(child: int | None = None) -> int | None:
    """Reap every ended child of this process (a subreaper's orphans become its children, and stay zombies
    until reaped); return the exit code of ``child`` if it was one of them (negative: killed by that
    signal)."""
    code = None
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return code
        if pid == 0:
            return code
        if pid == child:
            code = os.waitstatus_to_exitcode(status)


def _kill_all(find: Callable[[], list[int]], timeout: float, reap: bool) -> list[int]:
    """Kill the processes ``find()`` returns until it returns none; return those left after ``timeout``.

    Each round freezes first: SIGSTOP to everything found, then again to whatever a new look finds (a
    process stopped can no longer fork), until a look finds nothing new; only then SIGKILL, so that no
    process ends while its children still run (they could escape to init where no subreaper takes them).
    With ``reap``, zombies of the calling process's own children are reaped on the way."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        if reap:
            reap_children()
        found = _live(find())
        if not found or time.monotonic() > deadline:
            if reap:
                reap_children()  # those that ended since the look above
            return found
        frozen: set[int] = set()
        while True:
            fresh = [pid for pid in found if pid not in frozen]
            if not fresh or time.monotonic() > deadline:
                break
            for pid in fresh:
                send_signal(pid, signal.SIGSTOP)
            frozen.update(fresh)
            found = _live(find())
        for pid in found:
            send_signal(pid, signal.SIGKILL)
        time.sleep(pause)  # they are usually gone within a millisecond or two: look again soon, then less often
        pause = min(pause * 2, 0.05)


def kill_tree(root: int, timeout: float = KILL_TIMEOUT_SECONDS) -> list[int]:
    """Kill every process below ``root`` (orphans re-parented to a subreaper ``root`` included), freezing
    them first, until none is left or ``timeout`` has passed; return those left (normally none). Zombies
    are reaped only when ``root`` is the calling process; others' zombies do not count as left."""
    return _kill_all(lambda: descendants(root), timeout, reap=root == os.getpid())


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
        return ExitReason.EXITED_NORMALLY.value
    return f"exited with code {code}"


def kill_leftovers(timeout: float = KILL_TIMEOUT_SECONDS) -> list[int]:
    """Processes the container started do not outlive it: kill every descendant of the calling process
    (the supervisor: a subreaper, so orphans are among them) and, if it leads its process group, every
    other member of the group, reaping its zombies, until none is left or ``timeout`` has passed; return
    those left (normally none). It reaps every ended child of the calling process."""
    me, pgid = os.getpid(), os.getpgid(0)
    if pgid != me:  # a group it does not lead is not its own (its starter's, say): descendants only
        return _kill_all(lambda: descendants(me), timeout, reap=True)
    return _kill_all(lambda: sorted({*descendants(me), *group_members(pgid)}), timeout, reap=True)


def wait_child(pid: int) -> int | None:
    """The exit code of the child ``pid`` once it has ended (negative: killed by that signal); None if
    it was reaped already."""
    try:
        _, status = os.waitpid(pid, 0)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status)


def supervise(child: int, state_dir: Path, memory_mib: float, max_processes: int = DEFAULT_MAX_PROCESSES) -> int:
    """Watch ``child`` (a child of this process, in this process's group) and everything below this
    process until ``child`` ends, then kill what is left; return the supervisor's own exit code. The tree
    is killed when its memory (PSS) goes over ``memory_mib`` or it holds more than ``max_processes``
    processes. SIGTERM and SIGINT sent to the supervisor reach the whole tree.

    Makes this process a child subreaper if it is not one already; the supervisor should be one from
    before it forks ``child`` (``become_subreaper``), so that no orphan escapes in between."""
    become_subreaper()
    me = os.getpid()

    def forward(signum: int, _frame: object) -> None:
        for pid in descendants(me):
            send_signal(pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    while True:
        code = reap_children(child)  # orphans that ended, too: they stay zombies otherwise
        if code is None:
            try:
                pid, status = os.waitpid(child, os.WNOHANG)
            except ChildProcessError:  # not expected: only this process reaps its child
                _warn_left(kill_leftovers())
                write_exit(state_dir, None, "the container's process disappeared")
                return 1
            if pid:
                code = os.waitstatus_to_exitcode(status)
        if code is not None:
            break
        tree = descendants(me)
        reason = None
        if len(tree) > max_processes:
            reason = ExitReason.TOO_MANY_PROCESSES.with_details(
                f"the function started {len(tree)} processes, over the local limit of {max_processes}"
            )
        elif _rss_mib(tree) > memory_mib:  # PSS is at most RSS: read (dearer) only when RSS is over
            used = _pss_mib(tree)
            if used > memory_mib:
                reason = ExitReason.OUT_OF_MEMORY.with_details(
                    f"the processes used {used:.0f} MiB (PSS, {len(tree)} process{'es' if len(tree) != 1 else ''}), "
                    f"over the function's memory limit of {memory_mib:.0f} MiB; raise `memory` in @mn.function"
                )
        if reason is not None:
            _warn_left(kill_leftovers())
            write_exit(state_dir, -signal.SIGKILL, reason)
            return 137
        time.sleep(POLL_SECONDS)
    _warn_left(kill_leftovers())
    write_exit(state_dir, code, exit_reason(code))
    return code if code >= 0 else 128 - code


def _warn_left(left: list[int]) -> None:
    if left:
        print(f"[multinode] processes of a container could not be killed: {left}", file=sys.stderr)
