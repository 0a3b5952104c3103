"""A stand-in for Fargate's data plane, for tests against moto: runs ECS tasks as local processes.

moto records RunTask and StopTask but runs nothing. :class:`FakeFargate` watches a cluster and, for each
new task, starts the command of its container as a local process group, and moves the task through the
states ECS would show. It changes moto's in-memory task objects directly (moto's server runs in the
test process) for the fields ECS's API cannot set; tests/fake_ecs_state.py says how.
"""

from __future__ import annotations

import atexit
import os
import signal
import stat
import subprocess
import textwrap
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3

from tests import fake_ecs_state as state
from tests.fake_ecs_secrets import SECRETS_ERROR, SecretReader, StartFailure

__all__ = ["CAPACITY_UNAVAILABLE", "EXITED_REASON", "SECRETS_ERROR", "SPOT_INTERRUPTED", "FakeFargate", "LocalImage"]

INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "UV_CACHE_DIR")
"""What a real image's environment would provide (the test process's values)."""
EXITED_REASON = "Essential container in task exited"
"""ECS's ``stoppedReason`` when the essential container exits by itself (stopCode EssentialContainerExited)."""
CAPACITY_UNAVAILABLE = (
    "Capacity is unavailable at this time. Please try again later or in a different availability zone"
)
"""ECS's ``stoppedReason`` of a Fargate task it has no capacity for (stopCode TaskFailedToStart)."""
SPOT_INTERRUPTED = "Your Spot Task was interrupted."
DEFAULT_STOP_TIMEOUT_SECONDS = 30.0
"""Fargate's time between SIGTERM and SIGKILL when the container definition sets no ``stopTimeout``."""


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
    task: Any
    """moto's Task object."""
    process: subprocess.Popen[bytes]
    log_group: str
    log_stream: str
    stop_timeout: float
    reader: threading.Thread
    pending: list[tuple[int, str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    terminated_at: float | None = None
    """When the fake sent SIGTERM (time.monotonic)."""
    killed: bool = False


class FakeFargate:
    """Runs a cluster's ECS tasks as local processes, as Fargate would run them.

    * **Start.** A new task (RunTask) is PROVISIONING until the fake's next poll, then RUNNING with its
      container's command as a process group: ``entryPoint`` + ``command`` of the task definition's
      first container (or the RunTask override), ``python`` and the working directory replaced by
      ``resolve(image)``. Its environment is the container's ``environment``, the override's, and its
      ``secrets`` read from moto as ECS reads them: ``valueFrom`` a Secrets Manager ARN (the whole
      secret string, or ``ARN:json-key:version-stage:version-id`` for one key of a JSON secret) or an
      SSM parameter ARN or name (decrypted). A secret that cannot be read stops the task as
      TaskFailedToStart with a ``ResourceInitializationError: unable to pull secrets or registry
      auth: ...`` reason, and no process starts. Output goes to CloudWatch Logs under the awslogs
      stream name (``PREFIX/CONTAINER/TASK_ID``).
    * **Exit.** When the process ends by itself the task stops with stopCode EssentialContainerExited,
      ``stoppedReason`` "Essential container in task exited" and the container's ``exitCode``
      (Docker's convention: 128 + N when killed by signal N); what the process left running is killed.
    * **Stop.** StopTask records stopCode UserInitiated and the reason at once (``desiredStatus``
      STOPPED, ``lastStatus`` unchanged); the fake then sends SIGTERM to the container's main process
      (as ``docker stop`` does), then SIGKILL to the whole group after the container definition's
      ``stopTimeout`` (30 s when unset; Multinode's task definitions set 2 s). The task is STOPPED once
      the process is gone, with its ``exitCode`` (143 when SIGTERM ended it, 137 after SIGKILL).
      :meth:`interrupt` does the same with another stop code (SpotInterruption by default).
      A task stopped before the fake started it stops without a process (no ``exitCode``).
    * **Capacity.** ``fake.fail_next_starts(n, reason=CAPACITY_UNAVAILABLE, stop_code="TaskFailedToStart")``
      makes the next ``n`` new tasks (in RunTask order) stop at once with that stop code and
      ``stoppedReason`` (by default Fargate's "Capacity is unavailable at this time. Please try again
      later or in a different availability zone"), without starting a process, as Fargate does when it
      has no capacity; later tasks start normally. (RunTask itself still succeeds: its ``failures``
      shapes need a botocore Stubber.)
    * **Deprovisioning.** With ``deprovision_seconds`` a stopped task is DEPROVISIONING that long (its
      container already STOPPED) before STOPPED, as Fargate detaching the network interface.

    moto's RunTask is also made to refuse a ``capacityProviderStrategy`` naming a provider the cluster
    lacks, and tasks on FARGATE_SPOT show ``launchType`` FARGATE, as on ECS.

    Everything is killed on :meth:`stop` (and at interpreter exit): no orphans.
    """

    def __init__(
        self,
        cluster: str,
        resolve: Callable[[str], LocalImage],
        *,
        region: str | None = None,
        poll_interval: float = 0.1,
        deprovision_seconds: float = 0.0,
    ) -> None:
        self.cluster = cluster
        self.resolve = resolve
        self.poll_interval = poll_interval
        self.deprovision_seconds = deprovision_seconds
        self._session = boto3.session.Session(region_name=region)
        self.region = str(self._session.region_name)
        self._ecs = self._session.client("ecs")
        self._logs = self._session.client("logs")
        self._secrets = SecretReader(self._session, self.region)
        self._backend: Any = None
        self._cluster_name = ""
        self._handled: set[str] = set()
        self._running: dict[str, _Running] = {}
        self._deprovisioning: list[tuple[float, Any]] = []
        self._failures: deque[tuple[str, str]] = deque()
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
        account = self._session.client("sts").get_caller_identity()["Account"]
        self._backend, self._cluster_name = state.cluster_in_process(account, self.region, self.cluster)
        state.watch(self._backend, self._cluster_name, self)
        atexit.register(self._kill_all)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        self._kill_all()
        for running in list(self._running.values()):
            running.reader.join(timeout=10)
            code = running.process.returncode
            if code is not None and running.task.desired_status == "STOPPED":  # being stopped: it is now
                self._container_stopped(running, code if code >= 0 else 128 - code)
        self._running.clear()
        for _, task in self._deprovisioning:
            state.mark_stopped(task)
        self._deprovisioning.clear()
        if self._backend is not None:
            state.unwatch(self._backend, self._cluster_name, self)
        atexit.unregister(self._kill_all)

    def _kill_all(self) -> None:
        with self._lock:
            processes = list(self._all)
        for process in processes:
            _signal_group(process, signal.SIGKILL)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.errors.append(f"process {process.pid} did not die")

    # --- what tests ask -------------------------------------------------------------------------

    def fail_next_starts(
        self, n: int, reason: str = CAPACITY_UNAVAILABLE, stop_code: str = "TaskFailedToStart"
    ) -> None:
        """The next ``n`` new tasks stop at once with this stop code and ``stoppedReason``; none starts."""
        with self._lock:
            self._failures.extend([(stop_code, reason)] * n)

    def clear_failures(self) -> None:
        """Forget the failures ``fail_next_starts`` has not used yet: new tasks start again."""
        with self._lock:
            self._failures.clear()

    def interrupt(self, task_arn: str, stop_code: str = "SpotInterruption", reason: str = SPOT_INTERRUPTED) -> None:
        """AWS stops a task (a Spot interruption by default): SIGTERM, ``stopTimeout``, SIGKILL."""
        task = state.find_task(self._backend, self._cluster_name, task_arn)
        if task is None:
            raise AssertionError(f"no task {task_arn} in cluster {self._cluster_name}")
        state.request_stop(task, stop_code, reason)

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
        for arn, task in state.cluster_tasks(self._backend, self._cluster_name):
            running = self._running.get(arn)
            if running is not None:
                self._advance(running)
            elif arn not in self._handled:
                self._handled.add(arn)
                self._pick_up(arn, task)
        now = time.monotonic()
        for due, task in [d for d in self._deprovisioning if d[0] <= now]:
            state.mark_stopped(task)
            self._deprovisioning.remove((due, task))

    def _pick_up(self, arn: str, task: Any) -> None:
        with state.MODEL_LOCK:
            if task.last_status == "STOPPED":
                return  # stopped before the fake watched the cluster
            if task.desired_status == "STOPPED":  # StopTask before it started
                self._stop_unstarted(task, "TaskFailedToStart", "")
                return
        with self._lock:
            failure = self._failures.popleft() if self._failures else None
        if failure is not None:
            self._stop_unstarted(task, *failure)
            return
        try:
            self._launch(arn, task)
        except StartFailure as exc:
            self._stop_unstarted(task, "TaskFailedToStart", str(exc))
        except Exception as exc:  # noqa: BLE001 - the task fails to start, as on Fargate
            self._stop_unstarted(task, "TaskFailedToStart", f"CannotStartContainerError: {type(exc).__name__}: {exc}")

    def _stop_unstarted(self, task: Any, stop_code: str, reason: str) -> None:
        state.mark_container_stopped(
            task, exit_code=None, stop_code=stop_code, reason=reason, deprovisioning=self.deprovision_seconds > 0
        )
        if self.deprovision_seconds > 0:
            self._deprovisioning.append((time.monotonic() + self.deprovision_seconds, task))

    def _advance(self, running: _Running) -> None:
        self._flush(running)
        if running.process.poll() is not None:
            self._finish(running)
        elif running.task.desired_status == "STOPPED" or running.task.last_status == "STOPPED":
            now = time.monotonic()
            if running.terminated_at is None:
                running.terminated_at = now
                state.mark_stopping(running.task)
                try:  # the main process only, as `docker stop`: it decides what its children get
                    os.kill(running.process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            elif not running.killed and now - running.terminated_at >= running.stop_timeout:
                running.killed = True
                _signal_group(running.process, signal.SIGKILL)

    def _launch(self, arn: str, task: Any) -> None:
        definition = self._ecs.describe_task_definition(taskDefinition=task.task_definition_arn)["taskDefinition"]
        container = definition["containerDefinitions"][0]
        name = container["name"]
        environment = {e["name"]: e["value"] for e in container.get("environment") or []}
        for override in (task.overrides or {}).get("containerOverrides") or []:
            if override.get("name") == name:
                environment.update({e["name"]: e["value"] for e in override.get("environment") or []})
                if override.get("command"):
                    container = {**container, "command": override["command"]}
        for secret in container.get("secrets") or []:  # read before the image is pulled, as ECS does
            environment[secret["name"]] = self._secrets.read(secret["valueFrom"])
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
        stop_timeout = container.get("stopTimeout")
        running = _Running(
            task_arn=arn,
            task=task,
            process=process,
            log_group=log_group,
            log_stream=log_stream,
            stop_timeout=DEFAULT_STOP_TIMEOUT_SECONDS if stop_timeout is None else float(stop_timeout),
            reader=threading.Thread(target=lambda: None),
        )
        assert process.stdout is not None
        running.reader = threading.Thread(target=_read_lines, args=(process.stdout, running), daemon=True)
        running.reader.start()
        with self._lock:
            self._running[arn] = running
        self.pids[arn] = process.pid
        state.mark_running(task)

    def _finish(self, running: _Running) -> None:
        """The task's main process ended: kill what it left, write the rest of its output, stop the task."""
        _signal_group(running.process, signal.SIGKILL)  # as on Fargate, the task ends with its essential container
        running.reader.join(timeout=10)
        self._flush(running)
        code = running.process.returncode
        self._container_stopped(running, code if code >= 0 else 128 - code)

    def _container_stopped(self, running: _Running, exit_code: int) -> None:
        self.exit_codes[running.task_arn] = exit_code
        with self._lock:
            self._running.pop(running.task_arn, None)
            if running.process in self._all:
                self._all.remove(running.process)  # its group is gone: never signal that pid again
        deprovisioning = self.deprovision_seconds > 0
        state.mark_container_stopped(
            running.task,
            exit_code=exit_code,
            stop_code="EssentialContainerExited",
            reason=EXITED_REASON,
            deprovisioning=deprovisioning,
        )
        if deprovisioning:
            self._deprovisioning.append((time.monotonic() + self.deprovision_seconds, running.task))

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


def _signal_group(process: subprocess.Popen[bytes], signum: int) -> None:
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def script_image(root: Path, script: str) -> LocalImage:
    """A tiny local "image" for tests: a folder whose entry point (standing for ``python``) is a shell script."""
    root.mkdir(parents=True, exist_ok=True)
    entry = root / "entry.sh"
    entry.write_text("#!/bin/sh\n" + textwrap.dedent(script).lstrip())
    entry.chmod(entry.stat().st_mode | stat.S_IXUSR)
    return LocalImage(workdir=root, python=entry)


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not count)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
