"""Local backend: each container is a process group on this machine, under a small supervisor.

State lives in ``$MULTINODE_HOME/containers/EXECUTION_ID/`` (``state.json``, ``output.log``,
``exit.json``), so a control-plane worker started after another one died can still find, watch and
stop the containers the first one launched. CPU is not limited locally; memory is (see _local_shim).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from multinode.errors import ProvisionerError, VersionNotStoredError
from multinode.provisioner._local_shim import group_members
from multinode.provisioner.base import ContainerSpec, ContainerStatus, Provisioner
from multinode.provisioner.local_build import LocalVersionStore

_SHIM = Path(__file__).with_name("_local_shim.py")
_INHERITED_ENV = ("PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "UV_CACHE_DIR")
MAX_LOG_CHUNK_BYTES = 1024 * 1024
"""Largest piece of output returned by one ``logs`` call (Temporal payloads are capped at 2 MB)."""
STOP_WAIT_SECONDS = 10.0
"""How long ``stop`` waits for a killed process group to disappear."""


class LocalProvisioner(Provisioner):
    name = "local"
    status_poll_interval = 0.1

    def __init__(self, home: Path) -> None:
        self._home = home
        self._store = LocalVersionStore(home)
        self._children: dict[int, subprocess.Popen[bytes]] = {}

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
        self._store.link_runtime()
        state_dir.mkdir(parents=True, exist_ok=True)
        env = {k: os.environ[k] for k in _INHERITED_ENV if k in os.environ}
        env.update(spec.environment)
        env["PYTHONUNBUFFERED"] = "1"
        env["MULTINODE_LOG_FILE"] = str(state_dir / "output.log")
        with open(state_dir / "output.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    str(_SHIM),
                    str(state_dir),
                    str(spec.memory_mib),
                    str(python),
                    "-m",
                    "multinode._runtime.container",
                ],
                cwd=code_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        _write_json(state_dir / "state.json", {"pid": proc.pid, "start_ticks": _start_ticks(proc.pid)})
        return spec.execution_id

    def status(self, handle_id: str) -> ContainerStatus:
        state_dir = self._dir(handle_id)
        exited = _read_json(state_dir / "exit.json")
        if exited is not None:
            return ContainerStatus("exited", exited.get("exit_code"), str(exited.get("reason", "")))
        state = _read_json(state_dir / "state.json")
        if state is None:
            return ContainerStatus("exited", None, "the container was never started")
        if self._alive(state):
            return ContainerStatus("running")
        exited = _read_json(state_dir / "exit.json")  # it may have ended between the two reads
        if exited is not None:
            return ContainerStatus("exited", exited.get("exit_code"), str(exited.get("reason", "")))
        return ContainerStatus("exited", None, "the container's process was killed")

    def stop(self, handle_id: str) -> None:
        state_dir = self._dir(handle_id)
        state = _read_json(state_dir / "state.json")
        if state is None:
            return
        # The whole process group, even when the supervisor is gone: what the user code started too.
        pgid = int(state["pid"])
        deadline = time.monotonic() + STOP_WAIT_SECONDS
        while self._alive(state) or group_members(pgid):
            for pid in group_members(pgid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                raise ProvisionerError(f"Container {handle_id} did not stop within {STOP_WAIT_SECONDS:g} s.")
            time.sleep(0.02)
        if not (state_dir / "exit.json").exists():
            _write_json(state_dir / "exit.json", {"exit_code": -signal.SIGKILL, "reason": "stopped by Multinode"})

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
        return [d.name for d in root.iterdir() if self.status(d.name).state == "running"]

    def _alive(self, state: dict[str, int]) -> bool:
        pid = int(state["pid"])
        child = self._children.get(pid)
        if child is not None and child.poll() is not None:
            del self._children[pid]  # reaped: no zombie left behind
            return False
        ticks = _start_ticks(pid)
        return ticks is not None and ticks == state.get("start_ticks")


def _start_ticks(pid: int) -> int | None:
    """Start time of ``pid`` (guards against pid reuse), or None if it is gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _write_json(path: Path, data: object) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
