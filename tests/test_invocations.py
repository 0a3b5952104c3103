"""Invocation behaviour end to end: versions, failures, nesting, the SDK surface and its async twins."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from temporalio.client import Client

from multinode import InvocationStatus, get_deployed_function
from multinode._listing import newest_first
from multinode._settings import MultinodeSettings
from multinode.errors import InvocationFailedError, PayloadError, ValidationError
from tests.helpers import assert_eventually

VERSIONED = """
import time
from multinode import Multinode

mn = Multinode()

@mn.function()
def which_version(wait_seconds):
    time.sleep(wait_seconds)
    return "{label}"
"""


def test_register_twice_old_invocations_keep_their_version(register, project_name: str) -> None:
    assert register({"main.py": VERSIONED.format(label="first")}).version_id == "v1"
    fn = get_deployed_function(project_name, "which_version")
    in_flight = fn.start(3)
    assert_eventually(lambda: fn.get(in_flight).status == InvocationStatus.RUNNING)
    assert register({"main.py": VERSIONED.format(label="second")}).version_id == "v2"
    fresh = fn.start(0)
    assert fn.await_result(fresh, timeout=60) == "second"
    assert fn.get(fresh).version_id == "v2"
    assert fn.await_result(in_flight, timeout=60) == "first"
    assert fn.get(in_flight).version_id == "v1"
    pinned = get_deployed_function(project_name, "which_version", version_id="v1")
    assert pinned.call_remote(0) == "first"


def test_same_folder_registered_twice_gives_two_versions(register, project_name: str, tmp_path) -> None:
    from tests.helpers import write_tasks

    folder = write_tasks(tmp_path / "same", {"main.py": VERSIONED.format(label="same")})
    first, second = register(folder), register(folder)
    assert (first.version_id, second.version_id) == ("v1", "v2")
    assert first.code_digest == second.code_digest  # content-addressed: stored once


def test_user_exception_gives_failed_with_remote_error(register, project_name: str) -> None:
    register(
        {
            "main.py": """
            from multinode import Multinode

            mn = Multinode()

            class QuotaExceeded(Exception):
                pass

            @mn.function()
            def explode(n):
                raise QuotaExceeded(f"too many: {n}")
            """
        }
    )
    fn = get_deployed_function(project_name, "explode")
    invocation_id = fn.start(7)
    with pytest.raises(InvocationFailedError, match="too many: 7") as info:
        fn.await_result(invocation_id, timeout=60)
    assert info.value.error_type == "main.QuotaExceeded"
    assert info.value.error_message == "too many: 7"
    assert 'raise QuotaExceeded(f"too many: {n}")' in (info.value.traceback or "")
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.FAILED
    assert invocation.error is not None and invocation.error.type == "main.QuotaExceeded"
    assert invocation.terminated and invocation.num_failed_attempts == 1
    assert [e.status for e in invocation.executions] == [InvocationStatus.FAILED]


def test_tasks_folder_may_have_modules_named_like_ours(register, project_name: str) -> None:
    register(
        {
            "activities.py": "def act():\n    return 'activities'\n",
            "workflows.py": "def flow():\n    return 'workflows'\n",
            "provisioner/__init__.py": "def prov():\n    return 'provisioner'\n",
            "main.py": """
            from multinode import Multinode
            from activities import act
            from workflows import flow
            from provisioner import prov

            mn = Multinode()

            @mn.function()
            def names():
                return [act(), flow(), prov()]
            """,
        }
    )
    assert get_deployed_function(project_name, "names").call_remote() == ["activities", "workflows", "provisioner"]


def test_nested_invocation_records_parent(register, project_name: str) -> None:
    register(
        {
            "main.py": """
            from multinode import Multinode

            mn = Multinode()

            @mn.function()
            def child(x):
                return x + 1

            @mn.function()
            def parent(x):
                invocation_id = child.start(x)
                return [invocation_id, child.await_result(invocation_id)]
            """
        }
    )
    fn = get_deployed_function(project_name, "parent")
    parent_id = fn.start(1)
    child_id, child_result = fn.await_result(parent_id, timeout=60)
    assert child_result == 2
    child = get_deployed_function(project_name, "child").get(child_id)
    assert child.parent_invocation_id == parent_id
    assert child.version_id == "v1"


def test_map_starmap_list_and_get(register, project_name: str, settings: MultinodeSettings) -> None:
    register(
        {
            "main.py": """
            import time
            from multinode import Multinode

            mn = Multinode()

            @mn.function()
            def power(base, exponent=2):
                time.sleep(0.5 if base % 2 else 0)
                return base ** exponent
            """
        }
    )
    fn = get_deployed_function(project_name, "power")
    assert list(fn.map([1, 2, 3])) == [1, 4, 9]
    assert list(fn.starmap([(2, 3), (3, 3)])) == [8, 27]

    # `.list` reads Temporal's visibility store, which is eventually consistent (see list_async).
    def listed(count: int):  # noqa: ANN202
        page = fn.list()
        assert len(page.invocation_ids) >= count, page
        return page

    page = assert_eventually(lambda: listed(5))
    ids = page.invocation_ids
    assert len(ids) == 5 and page.offset is None
    assert all(fn.get(i).status == InvocationStatus.SUCCEEDED for i in ids)
    started_in_order = [fn.start(0), fn.start(2), fn.start(1)]
    page = assert_eventually(lambda: listed(8))
    assert page.invocation_ids[:3] == started_in_order[::-1]
    for invocation_id in started_in_order:
        fn.await_result(invocation_id, timeout=60)
    # Small pages over the live store: each invocation exactly once, newest first.
    query = f"WorkflowType = 'MultinodeInvocation' AND MultinodeProject = '{project_name}'"
    client = asyncio.run(Client.connect(settings.temporal_address))
    paged: list[str] = []
    offset = None
    while True:
        ids, offset = asyncio.run(newest_first(client, query, 3, offset))
        paged += ids
        if offset is None:
            break
    assert paged == fn.list().invocation_ids and len(paged) == 8


def test_async_twins(register, project_name: str) -> None:
    register(
        {
            "main.py": """
            from multinode import Multinode

            mn = Multinode()

            @mn.function()
            def double(x):
                return 2 * x
            """
        }
    )
    fn = get_deployed_function(project_name, "double")

    async def main() -> None:
        invocation_id = await fn.start_async(4)
        assert await fn.await_result_async(invocation_id) == 8
        invocation = await fn.get_async(invocation_id)
        assert invocation.status == InvocationStatus.SUCCEEDED
        assert await fn.call_remote_async(5) == 10
        assert [r async for r in fn.map_async([1, 2])] == [2, 4]
        assert [r async for r in fn.starmap_async([(3,)])] == [6]
        assert len((await fn.list_async()).invocation_ids) == 5
        await fn.cancel_async(invocation_id)  # finished: a no-op

    asyncio.run(main())


NOOP = """
from multinode import Multinode

mn = Multinode()

@mn.function()
def noop():
    return None
"""


GATED = """
import os
import time
from multinode import Multinode

mn = Multinode()

@mn.function()
def waits_for(gate):
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.path.exists(gate)
"""


def test_start_is_fast_and_result_arrives(register, project_name: str, tmp_path: Path) -> None:
    """`.start` returns without waiting for a container, let alone for the function: shown by a function
    that cannot end before the gate opens (not by a wall-clock bound, which a loaded machine breaks)."""
    register({"main.py": GATED})
    fn = get_deployed_function(project_name, "waits_for")
    gate = tmp_path / "gate"
    invocation_id = fn.start(str(gate))
    assert not fn.get(invocation_id).status.is_final
    gate.touch()
    assert fn.await_result(invocation_id, timeout=90) is True


def test_result_of_a_class_the_application_lacks(register, project_name: str) -> None:
    register(
        {
            "main.py": """
            from multinode import Multinode

            mn = Multinode()

            class Report:
                def __init__(self, total):
                    self.total = total

            @mn.function()
            def report(n):
                return Report(n)
            """
        }
    )
    fn = get_deployed_function(project_name, "report")
    invocation_id = fn.start(3)
    with pytest.raises(PayloadError, match="instance of main.Report, which this program does not define"):
        fn.await_result(invocation_id, timeout=60)
    invocation = fn.get(invocation_id)  # the status stays readable; the result is its raw JSON
    assert invocation.status == InvocationStatus.SUCCEEDED
    assert invocation.result == {"py/object": "main.Report", "total": 3}


def test_processes_started_by_user_code_do_not_outlive_the_container(register, project_name: str, tmp_path) -> None:
    register(
        {
            "main.py": """
            import os
            import subprocess
            from pathlib import Path
            from multinode import Multinode

            mn = Multinode()

            @mn.function()
            def leaves_a_child(pid_file):
                child = subprocess.Popen(["sleep", "300"])
                Path(pid_file).write_text(str(child.pid))
                os._exit(0)
            """
        }
    )
    fn = get_deployed_function(project_name, "leaves_a_child")
    pid_file = tmp_path / "pid"
    invocation_id = fn.start(str(pid_file))
    assert_eventually(lambda: fn.get(invocation_id).status.is_final, timeout=60)
    pid = int(pid_file.read_text())

    def gone() -> bool:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            return True
        return stat.rsplit(")", 1)[1].split()[0] == "Z"

    assert_eventually(gone, timeout=10)
    assert fn.get(invocation_id).terminated


def test_map_checks_every_input_before_starting_any(register, project_name: str) -> None:
    register({"main.py": NOOP.replace("def noop():", "def noop(x):")})
    fn = get_deployed_function(project_name, "noop")
    with pytest.raises(ValidationError, match="too many positional arguments"):
        list(fn.starmap([(1,), (2,), (3, 4)]))
    assert fn.list().invocation_ids == []  # nothing was started
