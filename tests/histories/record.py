"""Record workflow histories for tests/test_replay.py (run by hand when the workflows change on purpose).

    .venv/bin/python -m pytest tests/histories/record.py -p no:cacheprovider -q

Each scenario runs for real on the test dev server; its histories are written next to this file. The
replay test then proves that the current workflow code still replays them: a change that would break
invocations in flight during a worker upgrade fails it (use ``workflow.patched`` for such changes).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from temporalio.client import Client

from multinode import get_deployed_function
from multinode._settings import MultinodeSettings
from multinode.errors import InvocationCancelledError, InvocationFailedError
from tests.helpers import assert_eventually

HERE = Path(__file__).parent
TASKS = """
import time
from pathlib import Path
from multinode import Multinode

mn = Multinode()

@mn.function(max_retries=1)
def flaky(counter):
    path = Path(counter)
    n = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(n))
    if n == 1:
        raise RuntimeError("first attempt fails")
    for i in range(3):
        yield {"step": i}
        time.sleep(0.6)

@mn.function()
def sleeper():
    print("started", flush=True)
    time.sleep(3600)

@mn.function()
def broken():
    raise ValueError("always")
"""


async def _save(settings: MultinodeSettings, workflow_id: str, name: str) -> None:
    client = await Client.connect(settings.temporal_address)
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    (HERE / f"{name}.json").write_text(json.dumps(json.loads(history.to_json()), indent=1))


def test_record(register, project_name: str, settings: MultinodeSettings, tmp_path: Path) -> None:
    register({"main.py": TASKS})
    flaky = get_deployed_function(project_name, "flaky")
    retried = flaky.start(str(tmp_path / "counter"))
    assert flaky.await_result(retried, timeout=60) == {"step": 2}
    sleeper = get_deployed_function(project_name, "sleeper")
    cancelled = sleeper.start()
    assert_eventually(lambda: sleeper.get(cancelled).status.value == "RUNNING")
    sleeper.cancel(cancelled)
    with pytest.raises(InvocationCancelledError):
        sleeper.await_result(cancelled, timeout=60)
    broken = get_deployed_function(project_name, "broken")
    failed = broken.start()
    with pytest.raises(InvocationFailedError):
        broken.await_result(failed, timeout=60)
    for workflow_id, name in [
        (retried, "invocation_retried_with_progress"),
        (cancelled, "invocation_cancelled"),
        (failed, "invocation_failed"),
        (f"multinode-project:{project_name}", "project"),
        (f"multinode-quota:{project_name}:flaky", "quota"),
    ]:
        asyncio.run(_save(settings, workflow_id, name))


QUEUED = """
import time
from multinode import Multinode

mn = Multinode()

@mn.function(max_concurrency=1)
def one_at_a_time(i):
    time.sleep(0.3)
    return i
"""


def test_record_arrival_order(register, project_name: str, settings: MultinodeSettings) -> None:
    """Quota and invocation histories of the arrival-order rule (``.start``/``.map`` queue at the quota)."""
    register({"main.py": QUEUED})
    fn = get_deployed_function(project_name, "one_at_a_time")
    assert list(fn.map(range(3))) == [0, 1, 2]
    single = fn.start(7)
    assert fn.await_result(single, timeout=60) == 7
    for workflow_id, name in [
        (single, "invocation_queued_by_the_starter"),
        (f"multinode-quota:{project_name}:one_at_a_time", "quota_arrival_order"),
    ]:
        asyncio.run(_save(settings, workflow_id, name))


def test_record_deleted_then_registered(register, project_name: str, settings: MultinodeSettings) -> None:
    """The registry of a project deleted, then registered again: its run keeps going (patch
    ``multinode-project-tombstone``) and numbering continues. ``pre_tombstone_project_deleted`` is the
    same scenario recorded before the patch, when the run ended at deletion (its first run only)."""
    from multinode.control_plane.admin import delete_project_and_invocations

    assert register({"main.py": QUEUED}).version_id == "v1"
    asyncio.run(delete_project_and_invocations(settings, project_name))
    assert register({"main.py": QUEUED}).version_id == "v2"
    asyncio.run(_save(settings, f"multinode-project:{project_name}", "project_deleted_then_registered"))


def test_record_log_reader(register, project_name: str, settings: MultinodeSettings) -> None:
    """The task queue's log reader after reads of a running invocation's output: queries leave its history
    at its first events."""
    register({"main.py": TASKS})
    sleeper = get_deployed_function(project_name, "sleeper")
    running = sleeper.start()
    assert_eventually(lambda: "started" in sleeper.logs(running), timeout=60)
    sleeper.cancel(running)
    with pytest.raises(InvocationCancelledError):
        sleeper.await_result(running, timeout=60)
    asyncio.run(_save(settings, f"multinode-log-reader:{settings.task_queue}", "log_reader"))
