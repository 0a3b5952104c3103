"""``mn dev`` and the embedded dev server when their ports are taken: fail at once, naming the port."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from multinode._settings import MultinodeSettings
from multinode.control_plane import devserver as _devserver
from multinode.control_plane.devserver import DevServer
from multinode.errors import MultinodeError
from tests.conftest import free_port
from tests.helpers import assert_eventually
from tests.test_cli import MN

AT_ONCE = _devserver.START_TIMEOUT_SECONDS / 2
"""Failing "at once": well before the start timeout that a hang would run into, yet with room for `mn`
starting (a second or two of CPU) on a loaded machine, where a fixed few seconds is not enough."""


@contextlib.contextmanager
def taken_port() -> Iterator[int]:
    """A port another program listens on; it accepts connections (the kernel does) and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield server.getsockname()[1]


def mn_dev(*args: str, home: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEMPORAL_")}
    env["MULTINODE_HOME"] = str(home)
    began = time.monotonic()
    done = subprocess.run([MN, "dev", *args], capture_output=True, text=True, env=env, timeout=90)
    return done, time.monotonic() - began


def test_mn_dev_names_a_busy_grpc_port_at_once(tmp_path: Path) -> None:
    with taken_port() as port:
        done, elapsed = mn_dev("--port", str(port), "--ui-port", str(free_port()), home=tmp_path)
    assert done.returncode == 1, done.stderr
    assert elapsed < AT_ONCE, f"took {elapsed:.1f} s"
    assert f"Port {port} is in use by another program (not a Temporal server" in done.stderr, done.stderr
    assert "`mn dev --port PORT`" in done.stderr


def test_mn_dev_names_a_busy_ui_port_at_once(tmp_path: Path) -> None:
    with taken_port() as ui_port:
        done, elapsed = mn_dev("--port", str(free_port()), "--ui-port", str(ui_port), home=tmp_path)
    assert done.returncode == 1, done.stderr
    assert elapsed < AT_ONCE, f"took {elapsed:.1f} s"
    assert f"Port {ui_port}, for the Temporal Web UI, is in use by another program" in done.stderr, done.stderr
    assert "`mn dev --ui-port PORT`" in done.stderr


@pytest.mark.parametrize("busy", ["grpc", "ui"])
def test_a_port_taken_after_the_check_is_named_from_the_server_log(
    busy: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The server exits at once ("address already in use"); its log, not a 60 s timeout, says why.
    monkeypatch.setattr(_devserver, "port_free", lambda port, host="127.0.0.1": True)
    with taken_port() as port:
        ports = {"port": port, "ui_port": free_port()} if busy == "grpc" else {"port": free_port(), "ui_port": port}
        server = DevServer(**ports, db_file=tmp_path / "temporal.db", log_file=tmp_path / "temporal.log")
        began = time.monotonic()
        with pytest.raises(MultinodeError, match=f"Port {port}{', for the Temporal Web UI,' if busy == 'ui' else ''} "):
            server.start()
    assert time.monotonic() - began < AT_ONCE
    assert server.process is not None and server.process.poll() is not None


@pytest.mark.timeout(120)
def test_mn_dev_reuses_a_temporal_server_on_its_port(
    settings: MultinodeSettings, dev_server: DevServer, tmp_path: Path
) -> None:
    out = tmp_path / "out.txt"
    with open(out, "w") as sink:
        process = subprocess.Popen(
            [MN, "dev", "--port", str(dev_server.port)], stdout=sink, stderr=subprocess.STDOUT, env=dict(os.environ)
        )
    try:
        assert_eventually(lambda: "worker ready" in out.read_text(), timeout=60, message=out.name)
        assert f"Using the Temporal server already running at {dev_server.address}" in out.read_text()
    finally:
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 0, out.read_text()
