"""Supervisor of one local container process (stdlib only; run as ``python -I _local_shim.py``).

It runs the container's command, stops it when its memory goes over the function's limit, and
records how it ended in ``exit.json`` so that any control-plane worker, even one started after the
worker that launched it died, can tell why the container stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_SECONDS = 0.1


def _descendants(pid: int) -> list[int]:
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


def _kill_leftovers() -> None:
    """Processes the container started (in its process group) do not outlive it."""
    for pid in group_members(os.getpgid(0)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _write_exit(state_dir: Path, exit_code: int | None, reason: str) -> None:
    tmp = state_dir / "exit.json.tmp"
    tmp.write_text(json.dumps({"exit_code": exit_code, "reason": reason}))
    os.replace(tmp, state_dir / "exit.json")


def main() -> int:
    state_dir = Path(sys.argv[1])
    memory_mib = float(sys.argv[2])
    command = sys.argv[3:]
    child = subprocess.Popen(command)
    (state_dir / "child.pid").write_text(str(child.pid))

    def forward(signum: int, _frame: object) -> None:
        for pid in [child.pid, *_descendants(child.pid)]:
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    peak = 0.0
    while child.poll() is None:
        tree = [child.pid, *_descendants(child.pid)]
        rss = _rss_mib(tree)
        peak = max(peak, rss)
        if rss > memory_mib:
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            child.wait()
            _kill_leftovers()
            _write_exit(
                state_dir,
                -signal.SIGKILL,
                f"out of memory: the process used {rss:.0f} MiB, over the function's memory limit of "
                f"{memory_mib:.0f} MiB; raise `memory` in @mn.function",
            )
            return 137
        time.sleep(POLL_SECONDS)
    code = child.returncode
    _kill_leftovers()
    if code < 0:
        reason = f"killed by signal {signal.Signals(-code).name}"
    elif code == 0:
        reason = "exited normally"
    else:
        reason = f"exited with code {code}"
    _write_exit(state_dir, code, reason)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
