"""The local provisioner's templates: containers forked ahead of time, each used for one execution only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from multinode import get_deployed_function
from multinode._protocol import ENV_EXECUTION_ID, VersionRecord
from multinode._runtime.template import POOL_QUEUE_PREFIX
from multinode._settings import MultinodeSettings
from multinode.provisioner import ContainerSpec
from multinode.provisioner._local_shim import descendants
from multinode.provisioner.local import LocalProvisioner
from tests.helpers import ThreadWorker, assert_eventually

MAIN = """
import os
from multinode import Multinode

with open({imports!r}, "a") as f:  # module-level code: once per execution
    f.write(f"{{os.getpid()}}\\n")

mn = Multinode()

@mn.function()
def whoami():
    print("hello from", os.getpid())
    return {{
        "pid": os.getpid(),
        "cwd": os.getcwd(),
        "queue": os.environ["MULTINODE_CONTAINER_TASK_QUEUE"],
        "execution_id": os.environ["MULTINODE_EXECUTION_ID"],
        "log_file": os.environ["MULTINODE_LOG_FILE"],
    }}
"""

UNIT_NAMES = ("mn-template", "mn-supervisor", "mn-agent", "mn-user")


def _name(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except OSError:
        return None


def _ours() -> dict[int, str]:
    """Templates, supervisors and containers below this test process, by pid."""
    names = {pid: _name(pid) for pid in descendants(os.getpid())}
    return {pid: name for pid, name in names.items() if name in UNIT_NAMES}


def _spec(record: VersionRecord, settings: MultinodeSettings) -> ContainerSpec:
    execution_id = f"manual-{uuid.uuid4().hex[:12]}"
    return ContainerSpec(
        execution_id=execution_id,
        invocation_id=execution_id,
        project_name="manual",
        version_id=record.version_id,
        function_name="whoami",
        cpu=1,
        memory_mib=512,
        artifact=record.artifact,
        environment={**settings.to_env(), ENV_EXECUTION_ID: execution_id},
    )


def test_each_execution_gets_a_fresh_container_that_imports_main_afresh(
    register, project_name: str, settings: MultinodeSettings, tmp_path: Path
) -> None:
    imports = tmp_path / "imports.txt"
    record = register({"main.py": MAIN.format(imports=str(imports))})
    fn = get_deployed_function(project_name, "whoami")
    at_registration = imports.read_text().split()  # registration imports main.py to read its functions
    first_id, second_id = fn.start(), fn.start()
    first, second = fn.await_result(first_id, timeout=60), fn.await_result(second_id, timeout=60)
    assert first["pid"] != second["pid"]
    assert first["queue"] != second["queue"]
    in_containers = imports.read_text().split()[len(at_registration) :]
    assert sorted(int(pid) for pid in in_containers) == sorted([first["pid"], second["pid"]])
    provisioner = LocalProvisioner(settings.home)
    for invocation_id, seen in ((first_id, first), (second_id, second)):
        execution_id = fn.get(invocation_id).executions[0].execution_id
        assert seen["execution_id"] == execution_id
        assert seen["queue"].startswith(POOL_QUEUE_PREFIX)
        assert seen["queue"] == provisioner.task_queue(execution_id)
        assert Path(seen["cwd"]).name == record.code_digest
        assert seen["log_file"] == str(settings.home / "containers" / execution_id / "output.log")
        assert f"hello from {seen['pid']}" in provisioner.logs(execution_id)[0]


def test_stopping_the_worker_leaves_no_template_or_pool_unit(
    register, project_name: str, worker: ThreadWorker, tmp_path: Path
) -> None:
    register({"main.py": MAIN.format(imports=str(tmp_path / "imports.txt"))})
    get_deployed_function(project_name, "whoami").call_remote()

    def pool_ready() -> dict[int, str]:
        ours = _ours()
        names = list(ours.values())
        assert names.count("mn-template") == 1 and names.count("mn-agent") >= 2 and names.count("mn-user") >= 2, ours
        return ours

    ours = assert_eventually(pool_ready, timeout=30)
    worker.stop()
    assert_eventually(lambda: all(_gone(pid) for pid in ours), timeout=15, message=f"left running: {ours}")


@pytest.mark.timeout(300)  # a worker process starts (seconds on a loaded machine)
def test_a_killed_control_plane_leaves_no_template_or_pool_unit(
    register, project_name: str, worker: ThreadWorker, tmp_path: Path
) -> None:
    register({"main.py": MAIN.format(imports=str(tmp_path / "imports.txt"))})
    worker.stop()  # from now on only the worker process below serves the task queue
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "mn"), "worker"],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        fn = get_deployed_function(project_name, "whoami")
        fn.await_result(fn.start(), timeout=120)

        def pool_ready() -> dict[int, str]:
            names = {pid: _name(pid) for pid in descendants(process.pid)}
            ours = {pid: name for pid, name in names.items() if name in UNIT_NAMES}
            assert list(ours.values()).count("mn-agent") >= 2, ours
            return ours

        ours = assert_eventually(pool_ready, timeout=30)
        process.kill()  # SIGKILL: the template learns it from the end of its stdin
        process.wait()
        assert_eventually(lambda: all(_gone(pid) for pid in ours), timeout=15, message=f"left running: {ours}")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_a_container_outlives_close_and_stop_still_kills_it(
    register, settings: MultinodeSettings, tmp_path: Path
) -> None:
    imports = tmp_path / "imports.txt"
    record = register({"main.py": MAIN.format(imports=str(imports))})
    provisioner = LocalProvisioner(settings.home)
    spec = _spec(record, settings)
    handle = provisioner.start(spec)
    assert handle == spec.execution_id
    assert (provisioner.task_queue(handle) or "").startswith(POOL_QUEUE_PREFIX)
    (template,) = provisioner.template_pids()
    child_pid_file = settings.home / "containers" / handle / "child.pid"
    container = int(assert_eventually(lambda: child_pid_file.exists() and child_pid_file.read_text()))

    # main.py is imported by the agent's child, the process that runs user code (the first line of the file
    # is registration's import check).
    def user_process() -> int | None:
        pids = imports.read_text().split() if imports.exists() else []
        return int(pids[-1]) if pids and _parent(int(pids[-1])) == container else None

    user = assert_eventually(user_process)
    provisioner.close()
    assert _gone(template) and provisioner.template_pids() == []
    assert provisioner.status(handle).state == "running" and not _gone(container) and not _gone(user)
    provisioner.stop(handle)
    status = provisioner.status(handle)
    assert status.state == "exited" and status.reason == "stopped by Multinode"
    assert_eventually(lambda: _gone(container) and _gone(user), timeout=10)


def test_a_template_that_died_is_started_again(register, settings: MultinodeSettings, tmp_path: Path) -> None:
    record = register({"main.py": MAIN.format(imports=str(tmp_path / "imports.txt"))})
    provisioner = LocalProvisioner(settings.home)
    first = second = None
    try:
        first = provisioner.start(_spec(record, settings))
        (template,) = provisioner.template_pids()
        # 3 units: supervisor, agent and user process each
        units = assert_eventually(lambda: len(descendants(template)) >= 9 and descendants(template))
        os.kill(template, signal.SIGKILL)
        assert_eventually(lambda: provisioner.template_pids() == [])
        # The unassigned units see the end of their pipe and go; the assigned one runs on.
        assert_eventually(lambda: sum(not _gone(pid) for pid in units) == 3, timeout=15)
        assert provisioner.status(first).state == "running"
        second = provisioner.start(_spec(record, settings))
        assert provisioner.template_pids() not in ([], [template])
        assert provisioner.status(second).state == "running"
        assert provisioner.task_queue(second) != provisioner.task_queue(first)
    finally:
        provisioner.close()
        for handle in (first, second):
            if handle is not None:
                provisioner.stop(handle)


def test_without_a_pool_containers_are_forked_on_demand(
    register, settings: MultinodeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = register({"main.py": MAIN.format(imports=str(tmp_path / "imports.txt"))})
    monkeypatch.setenv("MULTINODE_LOCAL_POOL_SIZE", "0")
    provisioner = LocalProvisioner(settings.home)
    handle = provisioner.start(_spec(record, MultinodeSettings.from_env()))
    try:
        (template,) = provisioner.template_pids()
        assert provisioner.status(handle).state == "running"
        supervisor = json.loads((settings.home / "containers" / handle / "state.json").read_text())["pid"]
        assert_eventually(lambda: len(descendants(template)) == 3)  # the assigned unit only: supervisor, agent, user
        assert descendants(template)[0] == supervisor
    finally:
        provisioner.close()
        provisioner.stop(handle)
