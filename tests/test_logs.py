"""Reading logs: queries to the task queue's log reader workflow, so nothing reaches Temporal's history."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError

from multinode import InvocationStatus, get_deployed_function
from multinode._client import connect
from multinode._invocations import STICKY_FALLBACK_SECONDS, _query_log_reader
from multinode._protocol import LOG_READER_WORKFLOW, LogsRequest
from multinode._settings import MultinodeSettings
from multinode.activities import log_reads
from multinode.control_plane.devserver import DevServer
from multinode.control_plane.registration import register_async
from multinode.control_plane.worker import build_worker
from multinode.errors import MultinodeError
from multinode.provisioner.local import MAX_LOG_CHUNK_BYTES, LocalProvisioner
from tests.conftest import start_dev_server
from tests.helpers import ThreadWorker, assert_eventually, wait_for_worker, workflow_types, write_tasks

MN = str(Path(sys.executable).parent / "mn")
LINE_BYTES = 1024
LINES = 50 * 1024  # 50 MiB of output
NON_ASCII_LINE = 'tab\t"quoted" back\\slash \u2588\u2588\u2588 \u00e9t\u00e9 \U0001f600 \x01\x7f'

TASKS = """
import time
from multinode import Multinode

mn = Multinode()

@mn.function()
def loud(lines, width):
    for i in range(lines):
        print(f"line {i:07d} ".ljust(width - 1, "x"))
    return lines

@mn.function(max_retries=1)
def retried(counter, count, pause):
    import pathlib
    path = pathlib.Path(counter)
    attempt = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(attempt))
    for i in range(count):
        print(f"attempt {attempt} tick {i}", flush=True)
        time.sleep(pause)
    if attempt == 1:
        raise RuntimeError("first attempt fails")
    return attempt

@mn.function()
def ticker(count, pause):
    for i in range(count):
        print(f"tick {i}", flush=True)
        time.sleep(pause)
    return count

@mn.function()
def unicode(lines, line):
    for i in range(lines):
        print(f"{i} " + line)
    return lines
"""


def _expected_line(i: int) -> str:
    return f"line {i:07d} ".ljust(LINE_BYTES - 1, "x")


@pytest.fixture
def persistent_server(tmp_path: Path) -> Iterator[DevServer]:
    server = start_dev_server(ui=False, db_file=tmp_path / "temporal.db")
    yield server
    server.stop()


def _db_bytes(db_file: Path) -> int:
    """The dev server's SQLite database with its write-ahead log."""
    return sum(p.stat().st_size for p in (db_file, Path(f"{db_file}-wal")) if p.exists())


@pytest.mark.timeout(600)  # 50 MiB printed, then read twice (SDK and CLI), on a loaded machine
def test_reading_50_mb_of_logs_barely_grows_temporals_database(
    persistent_server: DevServer, settings: MultinodeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEMPORAL_ADDRESS", persistent_server.address)
    own = MultinodeSettings.from_env()
    worker = ThreadWorker(own)
    try:
        project = f"loud-{uuid.uuid4().hex[:6]}"
        asyncio.run(register_async(write_tasks(tmp_path / "tasks", {"main.py": TASKS}), project, own))
        fn = get_deployed_function(project, "loud", settings=own)
        invocation_id = fn.start(LINES, LINE_BYTES)
        assert fn.await_result(invocation_id, timeout=300) == LINES
        assert_eventually(lambda: fn.get(invocation_id).terminated, timeout=60)
        assert persistent_server.db_file is not None
        db_file = persistent_server.db_file
        types_before = workflow_types(own)
        time.sleep(1)  # let the server's writes of the invocation's end settle

        before = _db_bytes(db_file)
        begun = time.monotonic()
        text = fn.logs(invocation_id)
        sdk_seconds = time.monotonic() - begun
        begun = time.monotonic()
        printed = subprocess.run([MN, "logs", invocation_id], capture_output=True, env=os.environ.copy(), timeout=300)
        cli_seconds = time.monotonic() - begun
        after = _db_bytes(db_file)

        growth = after - before
        print(
            f"temporal.db + wal: {before:,} bytes before, {after:,} after reading 50 MiB twice: "
            f"+{growth:,} bytes (fn.logs {sdk_seconds:.1f} s, mn logs {cli_seconds:.1f} s)"
        )
        assert growth < 1024 * 1024
        assert len(text) == LINES * LINE_BYTES
        lines = text.splitlines()
        assert len(lines) == LINES
        assert lines[0] == _expected_line(0) and lines[-1] == _expected_line(LINES - 1)
        assert lines[LINES // 2] == _expected_line(LINES // 2)
        assert printed.returncode == 0, printed.stderr
        assert printed.stdout.decode() == text
        # No workflow was started by the reads (no MultinodeLogs per chunk); one log reader serves the queue.
        assert workflow_types(own) == types_before
        assert "MultinodeLogs" not in types_before and types_before.count(LOG_READER_WORKFLOW) == 1
    finally:
        worker.stop()
        for handle in LocalProvisioner(own.home).running_handles():
            LocalProvisioner(own.home).stop(handle)


@pytest.mark.timeout(180)
def test_follow_prints_every_line_as_it_comes_and_returns_when_the_invocation_ends(
    register, project_name: str, settings: MultinodeSettings
) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "ticker")
    count = 25
    invocation_id = fn.start(count, 0.2)
    process = subprocess.Popen(
        [MN, "logs", "--follow", invocation_id], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    arrivals: list[tuple[float, str]] = []

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            arrivals.append((time.time(), line.rstrip("\n")))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        assert process.wait(timeout=120) == 0, process.stderr.read() if process.stderr else ""
    finally:
        if process.poll() is None:
            process.kill()
        reader.join(timeout=10)
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
    exited = time.time()
    assert [line for _, line in arrivals] == [f"tick {i}" for i in range(count)]
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.SUCCEEDED and invocation.finished_at is not None
    finished = invocation.finished_at.replace(tzinfo=invocation.finished_at.tzinfo or timezone.utc).timestamp()
    # Followed, not read at the end: the first line came seconds before the invocation finished ...
    assert arrivals[0][0] < finished - 2, (datetime.fromtimestamp(arrivals[0][0]), invocation.finished_at)
    # ... and the command returned soon after it did (it polls every second).
    assert exited - finished < 10, exited - finished
    types = workflow_types(settings)
    assert "MultinodeLogs" not in types and types.count(LOG_READER_WORKFLOW) == 1, types


@pytest.mark.timeout(180)
def test_follow_goes_on_to_a_retry_from_its_first_line(register, project_name: str, tmp_path: Path) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "retried")
    invocation_id = fn.start(str(tmp_path / "attempts"), 8, 0.3)
    done = subprocess.run([MN, "logs", "--follow", invocation_id], capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    expected = [f"attempt {a} tick {i}" for a in (1, 2) for i in range(8)]
    lines = done.stdout.splitlines()
    assert [line for line in lines if line.startswith("attempt")] == expected, done.stdout
    assert fn.get(invocation_id).num_failed_attempts == 1


@pytest.mark.timeout(180)
def test_output_that_json_escapes_heavily_is_read_whole(register, project_name: str) -> None:
    """Temporal's JSON escapes every non-ASCII character (up to 12 bytes for one): a 1 MB chunk of such
    output goes back in parts that each stay under the payload limits."""
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "unicode")
    lines = 6000  # ~3.8 MB of UTF-8, ~15 MB once JSON-escaped
    invocation_id = fn.start(lines, NON_ASCII_LINE * 20)
    assert fn.await_result(invocation_id, timeout=120) == lines
    text = fn.logs(invocation_id)
    assert text == "".join(f"{i} " + NON_ASCII_LINE * 20 + "\n" for i in range(lines))


class _SlowProvisioner(LocalProvisioner):
    """The local backend, slower than a query may block for (like CloudWatch on a bad day)."""

    delay = 2.5

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.calls: list[str | None] = []

    def logs(self, handle_id: str, offset: str | None = None) -> tuple[str, str]:
        self.calls.append(offset)
        if handle_id == "broken":
            raise OSError("the backend is down")
        time.sleep(self.delay)
        return super().logs(handle_id, offset)


@pytest.mark.timeout(120)
async def test_a_slow_read_is_answered_as_pending_and_picked_up(settings: MultinodeSettings) -> None:
    """No read blocks a query for 2 s (the SDK's deadlock detection): a slow one is answered as pending
    and the SDK asks again. The worker here never started the log reader (like a worker of a version
    before it): the SDK starts it."""
    size = MAX_LOG_CHUNK_BYTES + MAX_LOG_CHUNK_BYTES // 2
    content = "".join(f"{i:09d}\n" for i in range(size // 10))
    folder = settings.home / "containers" / "exec-slow"
    folder.mkdir(parents=True)
    (folder / "output.log").write_text(content)
    client = await connect(settings)
    slow = _SlowProvisioner(settings.home)
    with log_reads.serving(settings.task_queue, {"local": slow}):
        async with build_worker(client, settings, slow):
            text, offset = "", None
            begun = time.monotonic()
            while True:
                request = LogsRequest(provisioner="local", execution_id="exec-slow", offset=offset)
                chunk = await _query_log_reader(client, settings, request)
                if not chunk.text:
                    break
                text, offset = text + chunk.text, chunk.offset
            assert text == content
            # Three reads (1 MiB, the rest, nothing more), each slower than a query may block; their parts
            # came from the kept read, not from reading again.
            assert slow.calls == [None, str(MAX_LOG_CHUNK_BYTES), str(len(content))], slow.calls
            assert time.monotonic() - begun >= 3 * slow.delay

            with pytest.raises(MultinodeError, match="execution broken.*OSError: the backend is down"):
                await _query_log_reader(client, settings, LogsRequest(provisioner="local", execution_id="broken"))
            with pytest.raises(MultinodeError, match="MULTINODE_PROVISIONER=fargate"):
                await _query_log_reader(client, settings, LogsRequest(provisioner="fargate", execution_id="x"))
    slow.close()


def _worker_process() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [MN, "worker"],
        env=os.environ.copy(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


@pytest.mark.timeout(180)
def test_reads_go_on_after_the_worker_that_answered_them_was_killed(settings: MultinodeSettings) -> None:
    """The server first sends a workflow's queries to the worker that ran it last; when that worker died,
    the SDK asks again until the server sends the query to the task queue (within about 10 s)."""
    folder = settings.home / "containers" / "exec-kill"
    folder.mkdir(parents=True)
    (folder / "output.log").write_text("before and after\n")
    own = settings.model_copy(update={"worker_wait_seconds": 5.0})  # the default

    async def read() -> str:
        request = LogsRequest(provisioner="local", execution_id="exec-kill")
        return (await _query_log_reader(await connect(own), own, request)).text

    first = _worker_process()
    second = None
    try:
        wait_for_worker(settings)
        assert assert_eventually(lambda: asyncio.run(read()), timeout=60) == "before and after\n"
        first.send_signal(signal.SIGKILL)
        first.wait()
        second = _worker_process()
        time.sleep(3)  # the replacement starts polling
        begun = time.monotonic()
        assert asyncio.run(read()) == "before and after\n"
        assert time.monotonic() - begun < own.worker_wait_seconds + STICKY_FALLBACK_SECONDS + 5
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                process.wait(timeout=30)


def test_log_reads_are_served_by_the_worker_of_their_task_queue(tmp_path: Path) -> None:
    first, second = LocalProvisioner(tmp_path / "a"), LocalProvisioner(tmp_path / "b")
    with log_reads.serving("queue-1", {"local": first}) as one:
        with log_reads.serving("queue-2", {"local": second}) as two:
            assert log_reads.reads_for("queue-1") is one and log_reads.reads_for("queue-2") is two
        with pytest.raises(ApplicationError, match="does not serve log reads of task queue 'queue-2'"):
            log_reads.reads_for("queue-2")


def test_fitting_prefix_respects_the_encoded_size() -> None:
    assert log_reads.fitting_prefix("abc", 100) == "abc"
    assert log_reads.fitting_prefix("a" * 100, 12) == "a" * 10  # two quotes around the text
    assert log_reads.fitting_prefix("\U0001f600" * 10, 30) == "\U0001f600" * 2  # 12 bytes each
