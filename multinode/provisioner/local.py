"""Local backend: each container is a process tree on this machine, under a small supervisor.

State lives in ``$MULTINODE_HOME/containers/EXECUTION_ID/`` (``state.json``, ``output.log``,
``exit.json``), so a control-plane worker started after another one died can still find, watch and
stop the containers the first one launched. CPU is not limited locally; memory and the number of
processes are (see _local_shim). A container runs as long as its supervisor does: the supervisor, a child
subreaper, ends only once every process below it (those that left its process group included) is gone.

Containers are forked, not started from nothing: per environment (a version's Python and Multinode's
settings) the provisioner starts one template process (``multinode._runtime.template``, logs in
``$MULTINODE_HOME/templates/KEY/template.log``) that has imported the runtime once and keeps a few
containers started ahead of time, connected and polling a task queue of their own. ``start`` assigns
the execution to one of them (each serves one execution only) and records its queue in ``state.json``.
Templates and their unassigned containers end with the control-plane worker (``close``, or the end of
their stdin if it dies); assigned containers run on.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

from multinode._credentials import ENV_CREDENTIALS_FD, credential_free_env, secrets_blob
from multinode._settings import MultinodeSettings
from multinode._vocabulary import ContainerState
from multinode.artifacts.local import LocalVersionStore
from multinode.errors import ProvisionerError, VersionNotStoredError
from multinode.provisioner._local_shim import group_members, kill_tree, send_signal, start_ticks, write_json
from multinode.provisioner.base import ContainerSpec, ContainerStatus, Provisioner

_INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "UV_CACHE_DIR")
MAX_LOG_CHUNK_BYTES = 1024 * 1024
"""Largest piece of output returned by one ``logs`` call (Temporal payloads are capped at 2 MB)."""
STOP_WAIT_SECONDS = 10.0
"""How long ``stop`` waits for a killed container (its supervisor's tree, its process group) to disappear."""
TEMPLATE_REPLY_TIMEOUT_SECONDS = 60.0
"""Longest ``start`` waits for a template's reply (the first one includes the template's own start-up)."""
TEMPLATE_CLOSE_WAIT_SECONDS = 5.0
"""How long ``close`` waits for a template to kill its unassigned containers and exit before killing it."""
LOG_LINES_IN_TEMPLATE_ERROR = 8
"""Last lines of a template's log quoted when it cannot start containers."""


class LocalProvisioner(Provisioner):
    name = "local"
    status_poll_interval = 0.1

    def __init__(self, home: Path) -> None:
        self._home = home
        self._store = LocalVersionStore(home)
        self._templates: dict[str, _Template] = {}
        self._templates_lock = threading.Lock()

    def _dir(self, handle_id: str) -> Path:
        return self._home / "containers" / handle_id

    def start(self, spec: ContainerSpec) -> str:
        state_dir = self._dir(spec.execution_id)
        if (state_dir / "state.json").exists():
            return spec.execution_id  # a retried start: the container already exists
        code_dir = self._store.code_dir(spec.artifact["code_digest"])
        python = self._store.env_python(spec.artifact["env_key"])
        if not code_dir.is_dir() or not python.exists():
            raise VersionNotStoredError(
                f"Version {spec.version_id} of project {spec.project_name!r} is not stored under "
                f"{self._home}: the local provisioner runs versions registered on this machine with the same "
                "MULTINODE_HOME. Register the project again here."
            )
        state_dir.mkdir(parents=True, exist_ok=True)
        settings_env = _settings_env_names()
        template = self._template(python, {k: v for k, v in spec.environment.items() if k in settings_env})
        request = {
            "op": "start",
            "execution_id": spec.execution_id,
            "state_dir": str(state_dir),
            "memory_mib": spec.memory_mib,
            "code_dir": str(code_dir),
            "env": {k: v for k, v in spec.environment.items() if k not in settings_env},
        }
        with template.lock:
            for _attempt in range(2):  # a template that died is started again, once
                if (state_dir / "state.json").exists():
                    return spec.execution_id  # the template assigned it, then died before replying
                try:
                    reply = template.request(request)
                except _TemplateGone:
                    continue
                if "error" in reply:
                    raise ProvisionerError(
                        f"The local container template could not start a container: {reply['error']}."
                    )
                return spec.execution_id
        if (state_dir / "state.json").exists():
            return spec.execution_id
        raise ProvisionerError(
            f"The local container template for {python} stopped; the end of {template.log_file}:\n"
            + template.log_tail()
        )

    def task_queue(self, handle_id: str) -> str | None:
        state = _read_json(self._dir(handle_id) / "state.json")
        return str(state["task_queue"]) if state and state.get("task_queue") else None

    def close(self) -> None:
        with self._templates_lock:
            templates = list(self._templates.values())
            self._templates.clear()
        for template in templates:
            with template.lock:
                template.close()

    def template_pids(self) -> list[int]:
        """The running templates' processes (for tests)."""
        with self._templates_lock:
            templates = list(self._templates.values())
        return [t.process.pid for t in templates if t.process is not None and t.process.poll() is None]

    def _template(self, python: Path, settings_env: dict[str, str]) -> _Template:
        # The template, and the user code forked from it, never see the credentials: only the agents
        # read them, from a descriptor the template passes on unread.
        env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        env.update(credential_free_env(settings_env))
        env["PYTHONUNBUFFERED"] = "1"
        credentials = secrets_blob(settings_env)
        key = hashlib.sha256(json.dumps([str(python), sorted(env.items()), credentials]).encode()).hexdigest()[:16]
        with self._templates_lock:
            template = self._templates.get(key)
            if template is None:
                folder = self._home / "templates" / key
                template = self._templates[key] = _Template(folder, python, env, credentials, self._store.link_runtime)
            return template

    def status(self, handle_id: str) -> ContainerStatus:
        state_dir = self._dir(handle_id)
        exited = _read_json(state_dir / "exit.json")
        state = _read_json(state_dir / "state.json")
        # The supervisor writes exit.json once its tree is gone, then ends: until it has ended, it may
        # still be killing what is left (a container is over only when none of its processes is left).
        if exited is not None and (state is None or not self._alive(state)):
            return ContainerStatus(ContainerState.EXITED, exited.get("exit_code"), str(exited.get("reason", "")))
        if state is None:
            return ContainerStatus(ContainerState.EXITED, None, "the container was never started")
        if self._alive(state):
            return ContainerStatus(ContainerState.RUNNING)
        exited = _read_json(state_dir / "exit.json")  # it may have ended between the two reads
        if exited is not None:
            return ContainerStatus(ContainerState.EXITED, exited.get("exit_code"), str(exited.get("reason", "")))
        return ContainerStatus(ContainerState.EXITED, None, "the container's process was killed")

    def exit_notifier(self, handle_id: str) -> int | None:
        state = _read_json(self._dir(handle_id) / "state.json")
        if state is None:
            return None
        try:
            fd = os.pidfd_open(int(state["pid"]))  # the supervisor: it exits once the container is gone
        except (OSError, AttributeError):  # gone already (status says so), or no pidfd on this system
            return None
        if not self._alive(state):  # the pid was reused after the supervisor ended
            os.close(fd)
            return None
        return fd

    def stop(self, handle_id: str) -> None:
        state_dir = self._dir(handle_id)
        state = _read_json(state_dir / "state.json")
        if state is None:
            return
        supervisor = pgid = int(state["pid"])
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        if self._alive(state):
            # Everything below the supervisor first, orphans that left its process group included (it is
            # their subreaper): killed before it, they cannot escape to init. Stopped meanwhile, it neither
            # writes its own exit.json nor ends before them.
            send_signal(supervisor, signal.SIGSTOP)
            left = kill_tree(supervisor, timeout=STOP_WAIT_SECONDS)
            if left:
                raise ProvisionerError(
                    f"Container {handle_id} did not stop within {STOP_WAIT_SECONDS:g} s: processes {left} are left."
                )
            if self._alive(state):
                send_signal(supervisor, signal.SIGKILL)
        # Then the whole process group, even when the supervisor is gone: what the user code started too.
        pause = 0.002  # a killed process is usually gone within milliseconds: look again soon, then less often
        while self._alive(state) or group_members(pgid):
            for pid in group_members(pgid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise ProvisionerError(f"Container {handle_id} did not stop within {STOP_WAIT_SECONDS:g} s.")
            time.sleep(pause)
            pause = min(pause * 2, 0.05)
        if not (state_dir / "exit.json").exists():
            write_json(state_dir / "exit.json", {"exit_code": -signal.SIGKILL, "reason": "stopped by Multinode"})

    def logs(self, handle_id: str, offset: str | None = None) -> tuple[str, str]:
        start = int(offset) if offset else 0
        try:
            with open(self._dir(handle_id) / "output.log", "rb") as log:
                log.seek(start)
                data = log.read(MAX_LOG_CHUNK_BYTES)
        except FileNotFoundError:
            return "", str(start)
        if len(data) == MAX_LOG_CHUNK_BYTES:
            # Do not split a UTF-8 character across chunks: drop a trailing partial sequence.
            for back in range(1, 4):
                if (data[-back] & 0xC0) == 0xC0:  # a lead byte
                    data = data[:-back]
                    break
                if (data[-back] & 0x80) == 0:
                    break
        return data.decode("utf-8", errors="replace"), str(start + len(data))

    def running_handles(self) -> list[str]:
        """Every container under this home that still runs (for clean-up and tests)."""
        root = self._home / "containers"
        if not root.is_dir():
            return []
        return [d.name for d in root.iterdir() if self.status(d.name).state == ContainerState.RUNNING]

    def _alive(self, state: dict[str, int]) -> bool:
        ticks = start_ticks(int(state["pid"]))
        return ticks is not None and ticks == state.get("start_ticks")


class _TemplateGone(Exception):
    """The template ended (or stopped answering) before it replied."""


class _Template:
    """One template process and the lock that serialises its requests (one request, then its reply)."""

    def __init__(
        self, folder: Path, python: Path, env: dict[str, str], credentials: str, prepare: Callable[[], object]
    ) -> None:
        self.folder = folder
        self.python = python
        self.env = env
        self._credentials = credentials
        self._prepare = prepare
        """Called before each start of the process (links the runtime the environment imports)."""
        self.lock = threading.Lock()
        self.process: subprocess.Popen[bytes] | None = None
        self._buffer = b""

    @property
    def log_file(self) -> Path:
        return self.folder / "template.log"

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send ``message`` and return the reply; hold ``lock``."""
        process = self._running()
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.write(json.dumps(message).encode() + b"\n")
            process.stdin.flush()
        except OSError:
            self.close()
            raise _TemplateGone() from None
        deadline = time.monotonic() + TEMPLATE_REPLY_TIMEOUT_SECONDS
        replies = select.poll()  # not select(): a busy control plane may hold descriptors past 1024
        replies.register(process.stdout, select.POLLIN)
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            readable = left > 0 and replies.poll(left * 1000)
            chunk = os.read(process.stdout.fileno(), 1 << 16) if readable else b""
            if not chunk:  # ended, or hangs: a fresh template replaces it
                self.close()
                raise _TemplateGone()
            self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def _running(self) -> subprocess.Popen[bytes]:
        if self.process is not None and self.process.poll() is None:
            return self.process
        self.close()
        self._prepare()
        cwd = self.folder / "cwd"
        cwd.mkdir(parents=True, exist_ok=True)
        credentials = os.memfd_create("multinode-credentials", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            data = self._credentials.encode()
            while data:
                data = data[os.write(credentials, data) :]
            # Sealed: no process that inherits it (nor one that gets hold of it) can change the profile
            # later agents read.
            fcntl.fcntl(
                credentials,
                fcntl.F_ADD_SEALS,
                fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE,
            )
            with open(self.log_file, "ab") as log:
                self.process = self._popen(cwd, log, credentials)
        finally:
            os.close(credentials)
        return self.process

    def _popen(self, cwd: Path, log: Any, credentials: int) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(self.python), "-m", "multinode._runtime.template", str(self.log_file)],
            cwd=cwd,
            env={**self.env, ENV_CREDENTIALS_FD: str(credentials)},
            pass_fds=[credentials],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            # Not in the control plane's process group: Ctrl-C on `mn dev` reaches the worker, which
            # closes the template (the end of its stdin) itself.
            start_new_session=True,
        )

    def close(self) -> None:
        """Close the template's stdin: it kills its unassigned containers and exits."""
        process, self.process, self._buffer = self.process, None, b""
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None
        try:
            process.stdin.close()
        except OSError:
            pass
        try:
            process.wait(TEMPLATE_CLOSE_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stdout.close()

    def log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return "\n".join(lines[-LOG_LINES_IN_TEMPLATE_ERROR:])


@cache
def _settings_env_names() -> frozenset[str]:
    """The variables of a container's environment that carry the control plane's settings: they go to the
    template (the same for every execution); the others are the execution's own."""
    return frozenset(MultinodeSettings().to_env())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_text())
        return value if isinstance(value, dict) else None
    except (FileNotFoundError, json.JSONDecodeError):
        return None
