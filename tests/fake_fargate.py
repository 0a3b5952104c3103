"""A stand-in for Fargate's data plane, for tests against moto: runs ECS tasks as local processes.

moto records RunTask and StopTask but runs nothing. :class:`FakeFargate` polls a cluster (ListTasks
``desiredStatus=RUNNING``, DescribeTasks, DescribeTaskDefinition) and, for each new task, starts the
command of its container as a local process group: the environment is the task definition's plus the
RunTask ``containerOverrides``; ``python`` and the working directory come from ``resolve(image)``.
The output goes to CloudWatch Logs under the awslogs stream name (``PREFIX/CONTAINER/TASK_ID``).
When the task is stopped (StopTask: its desired status turns STOPPED), the process group is killed;
when the process ends by itself, the fake calls StopTask with the reason
``Essential container in task exited (exit code N)`` after its output is written. (moto's tasks
never set ``containers[].exitCode``, ``stopCode`` or a container ``reason``: it stays 0, absent and
absent; the exit code travels in the reason.)

Everything is killed on :meth:`FakeFargate.stop` (and at interpreter exit): no orphans.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import boto3

INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "UV_CACHE_DIR")
"""What a real image's environment would provide (the test process's values)."""
EXITED_REASON = "Essential container in task exited"


@dataclass(frozen=True)
class LocalImage:
    """What a container image stands for locally."""

    workdir: Path
    """Replaces the container's working directory (the tasks folder)."""
    python: Path
    """Replaces ``python`` at the start of the container's command (any executable will do)."""


@dataclass
class _Running:
    task_arn: str
    process: subprocess.Popen[bytes]
    log_group: str
    log_stream: str
    reader: threading.Thread
    pending: list[tuple[int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped_by_ecs: bool = False


class FakeFargate:
    def __init__(
        self,
        cluster: str,
        resolve: Callable[[str], LocalImage],
        *,
        region: str | None = None,
        poll_interval: float = 0.1,
    ) -> None:
        self.cluster = cluster
        self.resolve = resolve
        self.poll_interval = poll_interval
        session = boto3.session.Session(region_name=region)
        self._ecs = session.client("ecs")
        self._logs = session.client("logs")
        self._seen: set[str] = set()
        self._running: dict[str, _Running] = {}
        self._all: list[subprocess.Popen[bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="fake-fargate", daemon=True)
        self._lock = threading.Lock()
        self.errors: list[str] = []
        """Problems of the fake itself (a test fails on them)."""
        self.exit_codes: dict[str, int] = {}
        """task ARN -> exit code of its process (Docker's convention: 128 + N when killed by signal N)."""
        self.pids: dict[str, int] = {}
        """task ARN -> pid of its process."""

    # --- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        atexit.register(self._kill_all)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._kill_all()
        for running in list(self._running.values()):
            running.reader.join(timeout=10)
        self._running.clear()
        atexit.unregister(self._kill_all)

    def _kill_all(self) -> None:
        with self._lock:
            processes = list(self._all)
        for process in processes:
            _kill_group(process)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.errors.append(f"process {process.pid} did not die")

    def running_tasks(self) -> list[str]:
        """Tasks whose process still runs."""
        with self._lock:
            return [arn for arn, r in self._running.items() if r.process.poll() is None]

    def alive_pids(self) -> list[int]:
        with self._lock:
            processes = list(self._all)
        return [p.pid for p in processes if p.poll() is None]

    def wait_started(self, task_arn: str, timeout: float = 60.0) -> int:
        """The pid of a task's process once it runs (the fake polls moto, which is slow on a loaded machine)."""
        deadline = time.monotonic() + timeout
        while task_arn not in self.pids:
            if time.monotonic() > deadline:
                raise AssertionError(f"the fake did not start {task_arn} within {timeout} s: {self.errors}")
            time.sleep(0.02)
        return self.pids[task_arn]

    # --- the loop -------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - recorded, the test fails on it
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self._stop.wait(self.poll_interval)

    def _tick(self) -> None:
        desired_running: set[str] = set()
        for page in self._ecs.get_paginator("list_tasks").paginate(cluster=self.cluster, desiredStatus="RUNNING"):
            desired_running.update(page["taskArns"])
        for arn in sorted(desired_running - self._seen):
            self._seen.add(arn)
            try:
                self._launch(arn)
            except Exception as exc:  # noqa: BLE001 - the task fails to start, as on Fargate
                self._ecs.stop_task(
                    cluster=self.cluster, task=arn, reason=f"CannotStartContainerError: {type(exc).__name__}: {exc}"
                )
        for arn, running in list(self._running.items()):
            self._flush(running)
            if running.process.poll() is not None:
                self._finish(running, report=arn in desired_running)
            elif arn not in desired_running:  # StopTask: kill it (stopTimeout elapsed at once)
                running.stopped_by_ecs = True
                _kill_group(running.process)
                running.process.wait(timeout=10)
                self._finish(running, report=False)

    def _launch(self, arn: str) -> None:
        task = self._ecs.describe_tasks(cluster=self.cluster, tasks=[arn])["tasks"][0]
        definition = self._ecs.describe_task_definition(taskDefinition=task["taskDefinitionArn"])["taskDefinition"]
        container = definition["containerDefinitions"][0]
        name = container["name"]
        environment = {e["name"]: e["value"] for e in container.get("environment") or []}
        for override in (task.get("overrides") or {}).get("containerOverrides") or []:
            if override.get("name") == name:
                environment.update({e["name"]: e["value"] for e in override.get("environment") or []})
                if override.get("command"):
                    container = {**container, "command": override["command"]}
        image = self.resolve(container["image"])
        command = list(container.get("entryPoint") or []) + list(container.get("command") or [])
        if not command:
            raise ValueError(f"task definition {definition['taskDefinitionArn']} has no command")
        if command[0] == "python":
            command[0] = str(image.python)
        env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
        env.update(environment)
        options = (container.get("logConfiguration") or {}).get("options") or {}
        log_group = options["awslogs-group"]
        log_stream = f"{options['awslogs-stream-prefix']}/{name}/{arn.rsplit('/', 1)[-1]}"
        try:
            self._logs.create_log_stream(logGroupName=log_group, logStreamName=log_stream)
        except self._logs.exceptions.ResourceAlreadyExistsException:
            pass
        with self._lock:  # under the lock: _kill_all must see every process
            process = subprocess.Popen(
                command,
                cwd=image.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self._all.append(process)
        running = _Running(
            task_arn=arn,
            process=process,
            log_group=log_group,
            log_stream=log_stream,
            reader=threading.Thread(target=lambda: None),
        )
        assert process.stdout is not None
        running.reader = threading.Thread(target=_read_lines, args=(process.stdout, running), daemon=True)
        running.reader.start()
        with self._lock:
            self._running[arn] = running
        self.pids[arn] = process.pid

    def _finish(self, running: _Running, *, report: bool) -> None:
        """The task's process ended: kill what it left, write the rest of its output, stop the task."""
        _kill_group(running.process)  # as on Fargate, the task ends with its essential container
        running.reader.join(timeout=10)
        self._flush(running)
        code = running.process.returncode
        exit_code = code if code >= 0 else 128 - code
        self.exit_codes[running.task_arn] = exit_code
        with self._lock:
            del self._running[running.task_arn]
            self._all.remove(running.process)  # its group is gone: never signal that pid again
        if report and not running.stopped_by_ecs:
            self._ecs.stop_task(
                cluster=self.cluster, task=running.task_arn, reason=f"{EXITED_REASON} (exit code {exit_code})"
            )

    def _flush(self, running: _Running) -> None:
        with running.lock:
            events, running.pending = running.pending, []
        events = [(t, m) for t, m in events if m]  # CloudWatch refuses empty messages
        for start in range(0, len(events), 1000):
            self._logs.put_log_events(
                logGroupName=running.log_group,
                logStreamName=running.log_stream,
                logEvents=[{"timestamp": t, "message": m} for t, m in events[start : start + 1000]],
            )


def _read_lines(stream: IO[bytes], running: _Running) -> None:
    for raw in stream:
        line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        with running.lock:
            running.pending.append((int(time.time() * 1000), line))
    stream.close()


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
