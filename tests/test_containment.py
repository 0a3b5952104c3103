"""Containment of local containers: every process an execution starts dies with it (``setsid`` and double
forks included), memory is measured as the kernel charges it (PSS), and a runaway tree is stopped."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from multinode import InvocationStatus, get_deployed_function
from multinode.errors import InvocationCancelledError, InvocationFailedError
from multinode.provisioner._local_shim import start_ticks
from multinode.provisioner.local import LocalProvisioner
from tests.helpers import assert_eventually

TASKS = """
import json
import multiprocessing
import os
import subprocess
import time
from pathlib import Path

from multinode import Multinode
from multinode.errors import InvocationCancelledError

mn = Multinode()

def _ticks(pid):
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])

def _escape():
    # A child in a session of its own, and a double-forked grandchild (also in a session of its own),
    # both sleeping: [[pid, start ticks], ...].
    sleeper = subprocess.Popen(["setsid", "sleep", "300"])
    read_end, write_end = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        grandchild = os.fork()
        if grandchild == 0:
            os.execvp("sleep", ["sleep", "300"])
        os.write(write_end, str(grandchild).encode())
        os._exit(0)
    os.close(write_end)
    grandchild = int(os.read(read_end, 64))
    os.close(read_end)
    os.waitpid(middle, 0)
    return [[pid, _ticks(pid)] for pid in (sleeper.pid, grandchild)]

@mn.function()
def escapes():
    return _escape()

@mn.function()
def escapes_then_waits(pid_file, ignore_cancellation):
    pids = _escape()
    Path(pid_file + ".tmp").write_text(json.dumps(pids))
    os.replace(pid_file + ".tmp", pid_file)
    print("started", flush=True)
    while True:
        try:
            time.sleep(3600)
        except InvocationCancelledError:
            if not ignore_cancellation:
                raise
            print("ignoring the cancellation", flush=True)

def _tree_rss_mib():
    pids, stack = [], [os.getpid()]
    while stack:
        pid = stack.pop()
        pids.append(pid)
        for tid in os.listdir(f"/proc/{pid}/task"):
            stack.extend(int(c) for c in Path(f"/proc/{pid}/task/{tid}/children").read_text().split())
    kib = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                kib += int(line.split()[1])
    return kib / 1024

@mn.function(memory="256 MiB")
def forked_pool():
    ballast = b"\\x01" * (60 * 2**20)  # resident in the parent, shared copy-on-write with every worker
    with multiprocessing.get_context("fork").Pool(8) as pool:
        pool.map(time.sleep, [1.0] * 8)
        rss = _tree_rss_mib()
        time.sleep(1)  # the supervisor looks every 0.1 s
    return {"rss_mib": rss, "ballast": len(ballast)}

@mn.function(memory="128 MiB")
def hog():
    data = b"\\x01" * (400 * 2**20)
    time.sleep(30)
    return len(data)
"""

CONTAINER_START = 60
"""Seconds to wait for user code to start: a container costs ~1 s of CPU, many times that on a loaded machine."""


def _gone(pid: int, ticks: int) -> bool:
    """``pid`` (started at ``ticks``) has ended: it is no longer there, is a zombie, or is another process."""
    return start_ticks(pid) != ticks


def _assert_all_gone(pids: list[list[int]]) -> None:
    left = [pid for pid, ticks in pids if not _gone(pid, ticks)]
    assert not left, f"processes outlived their container: {left}"


def _logs_contain(fn, invocation_id: str, home: Path, text: str) -> bool:  # noqa: ANN001
    invocation = fn.get(invocation_id)
    if not invocation.executions:
        return False
    logs, _ = LocalProvisioner(home).logs(invocation.executions[-1].execution_id)
    return text in logs


@pytest.mark.timeout(180)
def test_setsid_and_double_forked_processes_end_with_the_execution(register, project_name: str) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "escapes")
    invocation_id = fn.start()
    pids = fn.await_result(invocation_id, timeout=CONTAINER_START + 30)
    assert len(pids) == 2
    assert_eventually(lambda: fn.get(invocation_id).terminated, timeout=30)
    # Terminated means gone: checked once, not waited for.
    _assert_all_gone(pids)


@pytest.mark.timeout(180)
@pytest.mark.parametrize("ignore_cancellation", [False, True], ids=["graceful", "killed-after-grace"])
def test_escaped_processes_end_with_a_cancelled_execution(
    register, project_name: str, settings, tmp_path: Path, ignore_cancellation: bool
) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "escapes_then_waits")
    pid_file = tmp_path / "pids.json"
    invocation_id = fn.start(str(pid_file), ignore_cancellation)
    pids = json.loads(
        str(assert_eventually(lambda: pid_file.exists() and pid_file.read_text(), timeout=CONTAINER_START))
    )
    assert_eventually(lambda: _logs_contain(fn, invocation_id, settings.home, "started"), timeout=30)
    assert not any(_gone(pid, ticks) for pid, ticks in pids)  # they sleep meanwhile
    fn.cancel(invocation_id)
    with pytest.raises(InvocationCancelledError):
        fn.await_result(invocation_id, timeout=90)
    assert_eventually(lambda: fn.get(invocation_id).terminated, timeout=30)
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.CANCELLED
    if ignore_cancellation:  # ended by the provisioner's stop after the grace period, not by the code
        assert _logs_contain(fn, invocation_id, settings.home, "ignoring the cancellation")
    _assert_all_gone(pids)
    assert LocalProvisioner(settings.home).running_handles() == []


@pytest.mark.timeout(180)
def test_forked_workers_count_their_shared_memory_once(register, project_name: str) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "forked_pool")
    invocation_id = fn.start()
    result = fn.await_result(invocation_id, timeout=CONTAINER_START + 60)
    # Summed as RSS, the tree went well over its 256 MiB; as PSS (what the kernel charges) it did not.
    assert result["rss_mib"] > 256, result
    assert fn.get(invocation_id).status == InvocationStatus.SUCCEEDED


@pytest.mark.timeout(180)
def test_memory_over_the_limit_is_out_of_memory(register, project_name: str) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "hog")
    invocation_id = fn.start()
    with pytest.raises(InvocationFailedError, match="out of memory") as info:
        fn.await_result(invocation_id, timeout=CONTAINER_START + 30)
    assert "128 MiB" in str(info.value) and "PSS" in str(info.value)
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.FAILED and invocation.terminated


# Unit level: the supervisor in a process of its own (the test process must not become a subreaper, nor
# have its children killed), started like the template starts one: a session of its own, a subreaper.
SUPERVISOR = """
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from multinode.provisioner._local_shim import (
    _pss_mib, _rss_mib, become_subreaper, descendants, start_ticks, supervise,
)

os.setsid()
subreaper = become_subreaper()
state_dir = Path(sys.argv[1])
pids_file = state_dir / "pids"

def record(pid):
    fd = os.open(pids_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    os.write(fd, f"{{pid}} {{start_ticks(pid)}}\\n".encode())
    os.close(fd)

def container():
{container}

child = os.fork()
if child == 0:
    try:
        container()
    finally:
        os._exit(0)
code = supervise(child, state_dir, **{options})
print(json.dumps({{"code": code, "subreaper": subreaper, "left": descendants(os.getpid())}}))
"""


def _supervise(tmp_path: Path, container: str, **options: object) -> tuple[list[dict], dict, list[list[int]]]:
    """Run ``container`` (a function body) under ``supervise(child, state_dir, **options)`` in a
    supervisor process; return the JSON lines printed (the supervisor's outcome last), its exit.json and
    the processes the body recorded."""
    source = SUPERVISOR.format(container=textwrap.indent(textwrap.dedent(container), "    "), options=options)
    done = subprocess.run(
        [sys.executable, "-c", source, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    recorded = (tmp_path / "pids").read_text().split("\n") if (tmp_path / "pids").exists() else []
    pids = [[int(pid), int(ticks)] for pid, ticks in (line.split() for line in recorded if line)]
    exited = json.loads((tmp_path / "exit.json").read_text())
    return [json.loads(line) for line in done.stdout.splitlines()], exited, pids


@pytest.mark.timeout(90)
def test_supervise_kills_a_setsid_child_and_a_double_forked_grandchild(tmp_path: Path) -> None:
    (*_, outcome), exited, pids = _supervise(
        tmp_path,
        """
        sleeper = subprocess.Popen(["setsid", "sleep", "300"])
        record(sleeper.pid)
        middle = os.fork()
        if middle == 0:
            os.setsid()
            if os.fork() == 0:
                record(os.getpid())
                time.sleep(300)
            os._exit(0)
        os.waitpid(middle, 0)
        while len(pids_file.read_text().split("\\n")) < 3:  # the grandchild has recorded itself
            time.sleep(0.01)
        """,
        memory_mib=10_000,
    )
    assert outcome == {"code": 0, "subreaper": True, "left": []}
    assert exited == {"exit_code": 0, "reason": "exited normally"}
    assert len(pids) == 2
    _assert_all_gone(pids)


@pytest.mark.timeout(90)
def test_supervise_stops_a_tree_with_too_many_processes(tmp_path: Path) -> None:
    (*_, outcome), exited, pids = _supervise(
        tmp_path,
        """
        for _ in range(20):
            if os.fork() == 0:
                record(os.getpid())
                time.sleep(300)
                os._exit(0)
        time.sleep(300)
        """,
        memory_mib=10_000,
        max_processes=10,
    )
    assert outcome == {"code": 137, "subreaper": True, "left": []}
    assert exited["exit_code"] == -9
    assert exited["reason"].startswith("too many processes: the function started ")
    assert "over the local limit of 10" in exited["reason"] and "memory" not in exited["reason"]
    assert pids
    _assert_all_gone(pids)


@pytest.mark.timeout(90)
def test_supervise_measures_forked_copies_once(tmp_path: Path) -> None:
    (*printed, outcome), exited, pids = _supervise(
        tmp_path,
        """
        ballast = b"\\x01" * (50 * 2**20)
        for _ in range(6):
            if os.fork() == 0:
                record(os.getpid())
                time.sleep(300)
                os._exit(0)
        while len(pids_file.read_text().split("\\n")) < 7:
            time.sleep(0.01)
        tree = [os.getpid(), *descendants(os.getpid())]
        print(json.dumps({"rss": _rss_mib(tree), "pss": _pss_mib(tree)}), flush=True)
        time.sleep(1)  # watched meanwhile: 350 MiB as RSS, not as PSS
        """,
        memory_mib=150,
    )
    (measured,) = printed
    assert measured["rss"] > 300 and measured["pss"] < 100, measured
    assert outcome == {"code": 0, "subreaper": True, "left": []}
    assert exited == {"exit_code": 0, "reason": "exited normally"}
    _assert_all_gone(pids)


@pytest.mark.timeout(90)
def test_supervise_stops_a_tree_over_its_memory(tmp_path: Path) -> None:
    (*_, outcome), exited, pids = _supervise(
        tmp_path,
        """
        if os.fork() == 0:
            record(os.getpid())
            hoard = b"\\x01" * (300 * 2**20)
            time.sleep(300)
            os._exit(0)
        time.sleep(300)
        """,
        memory_mib=100,
    )
    assert outcome == {"code": 137, "subreaper": True, "left": []}
    assert exited["exit_code"] == -9
    assert exited["reason"].startswith("out of memory: the processes used ")
    assert "(PSS, 2 processes), over the function's memory limit of 100 MiB" in exited["reason"]
    _assert_all_gone(pids)
