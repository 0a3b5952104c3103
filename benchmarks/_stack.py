"""A throwaway local stack for benchmarks: `mn dev` on free ports with a temporary MULTINODE_HOME.

Whatever happens (error, Ctrl-C, SIGTERM), leaving the context stops `mn dev` and every process that
belongs to this stack (the Temporal server, containers), so a benchmark leaves no orphans behind.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


@dataclass
class Stack:
    env: dict[str, str]
    home: Path
    pid: int
    """The `mn dev` process: it runs the control-plane worker; the Temporal server and containers are its children."""
    scratch: Path
    """A folder for marker files shared with user code."""

    @property
    def address(self) -> str:
        return self.env["TEMPORAL_ADDRESS"]

    @property
    def worker_log(self) -> Path:
        """Where `mn dev` writes (its stdout and stderr): the control-plane worker's log."""
        return self.home / "dev.log"

    def rss_mb(self) -> dict[str, float]:
        """RSS in MB of the control-plane worker (the `mn dev` Python process), of the Temporal server,
        and of every other descendant together (containers, their supervisors, any pre-started ones).

        A sum of RSS counts pages that forked processes share once per process: an upper bound."""
        rss = {"worker": _rss_mb(self.pid), "server": 0.0, "containers": 0.0}
        for pid in descendants(self.pid):
            rss["server" if _is_temporal_server(pid) else "containers"] += _rss_mb(pid)
        return rss

    def worker_cpu_seconds(self) -> float:
        """CPU time the `mn dev` process has used: tells when the control plane has caught up."""
        return cpu_seconds(self.pid)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far (0 once it is gone)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK") if fields else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): state is [0], ppid [1], pgid [2]."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _rss_mb(pid: int) -> float:
    try:
        resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0.0
    return resident_pages * PAGE_BYTES / 1e6


def _is_temporal_server(pid: int) -> bool:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return Path(argv[0].decode(errors="replace")).name == "temporal" and b"server" in argv


def _all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def process_children() -> dict[int, list[int]]:
    """Every live process's children, by parent pid (zombies left out)."""
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        fields = _stat_fields(pid)
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(pid)
    return children


def descendants(root: int) -> list[int]:
    children = process_children()
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _belongs_to(pid: int, home: Path) -> bool:
    """Whether a process is part of the stack living in ``home``: the server's command line names its
    database there; a container's supervisor names its state folder there and the container runs in it."""
    try:
        if str(home).encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
            return True
        return os.readlink(f"/proc/{pid}/cwd").startswith(str(home))
    except OSError:
        return False


def _kill_leftovers(home: Path) -> None:
    """Containers outlive a stopped worker by design (the next worker adopts them), and a process whose
    parent was killed is reparented: find them by their home folder and kill their process groups."""
    own_group = os.getpgrp()
    for pid in _all_pids():
        if pid == os.getpid() or not _belongs_to(pid, home):
            continue
        fields = _stat_fields(pid)
        group = int(fields[2]) if fields else 0
        try:
            if group > 1 and group != own_group:
                os.killpg(group, signal.SIGKILL)
            else:
                os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _raise_on_sigterm() -> None:
    """Python dies of SIGTERM without running `finally`; turn it into SystemExit so the stack is stopped."""

    def stop(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    try:
        signal.signal(signal.SIGTERM, stop)
    except ValueError:
        pass  # not the main thread: leave SIGTERM alone


def _stop(proc: subprocess.Popen[bytes], home: Path) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    _kill_leftovers(home)


@contextmanager
def local_stack() -> Iterator[Stack]:
    """Start `mn dev` (embedded server + control-plane worker); yield how to reach it."""
    _raise_on_sigterm()
    home = Path(tempfile.mkdtemp(prefix="mn-bench-"))
    port = free_port()
    env = {
        **os.environ,
        "MULTINODE_HOME": str(home),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
        "MULTINODE_TASK_QUEUE": "bench",
    }
    mn = str(Path(sys.executable).parent / "mn")
    log_path = home / "dev.log"  # also Stack.worker_log
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [mn, "dev", "--port", str(port), "--ui-port", str(free_port())],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    keep = False
    try:
        deadline = time.monotonic() + 60
        while b"Control-plane worker ready" not in log_path.read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"`mn dev` did not start:\n{log_path.read_text()}")
            time.sleep(0.1)
        os.environ.update(env)
        scratch = home / "scratch"
        scratch.mkdir()
        yield Stack(env=env, home=home, pid=proc.pid, scratch=scratch)
    except Exception:
        keep = True
        print(f"benchmark stack kept for inspection in {home} (see dev.log there)", file=sys.stderr)
        raise
    finally:
        _stop(proc, home)
        if not keep:
            shutil.rmtree(home, ignore_errors=True)


@contextmanager
def stack_with_project(main_py: str, project: str = "bench") -> Iterator[Stack]:
    """A local stack with ``main_py`` registered as ``project``."""
    with local_stack() as stack:
        folder = stack.home / "tasks"
        folder.mkdir()
        (folder / "main.py").write_text(main_py)
        mn = str(Path(sys.executable).parent / "mn")
        subprocess.run(
            [mn, "register", str(folder), "--project", project], env=stack.env, check=True, capture_output=True
        )
        yield stack


def percentile(seconds: list[float], fraction: float) -> float:
    """Nearest-rank percentile of ``seconds``, in ms."""
    ms = sorted(s * 1000 for s in seconds)
    return ms[min(len(ms) - 1, round(fraction * (len(ms) - 1)))]


def summary(label: str, seconds: list[float]) -> str:
    median = statistics.median(s * 1000 for s in seconds)
    p95 = percentile(seconds, 0.95)
    return f"{label:<58} median {median:8.1f} ms   p95 {p95:8.1f} ms   (n={len(seconds)})"
