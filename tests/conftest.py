"""One Temporal dev server per session; per test a fresh task queue, home and control-plane worker."""

from __future__ import annotations

import asyncio
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from multinode._protocol import VersionRecord
from multinode._settings import MultinodeSettings
from multinode.control_plane.devserver import DevServer
from multinode.control_plane.registration import register_async
from multinode.errors import MultinodeError
from multinode.provisioner.local import LocalProvisioner
from tests.helpers import ThreadWorker, write_tasks
from tests.tls_stack import answering_dev_server, pki, proxies, stack  # noqa: F401 - fixtures for TLS tests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_dev_server(*, ui: bool = True, **options: Any) -> DevServer:
    """A started dev server on free ports. Retried: the server also opens ports of its own choosing
    (HTTP API, metrics), which may take one of ours between our pick and its bind."""
    for attempt in range(5):
        server = DevServer(port=free_port(), ui_port=free_port() if ui else None, **options)
        try:
            server.start()
            return server
        except MultinodeError:
            server.stop()
            if attempt == 4:
                raise
    raise AssertionError("unreachable")


@pytest.fixture(scope="session")
def dev_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    server = start_dev_server(log_file=tmp_path_factory.mktemp("temporal") / "server.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Stored code and environments are content-addressed, so tests share them."""
    home = tmp_path_factory.mktemp("multinode-shared")
    (home / "code").mkdir()
    (home / "envs").mkdir()
    return home


@pytest.fixture
def settings(
    dev_server: DevServer, shared_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> MultinodeSettings:
    home = tmp_path / "home"
    home.mkdir()
    for shared in ("code", "envs"):
        (home / shared).symlink_to(shared_home / shared, target_is_directory=True)
    env = {
        "TEMPORAL_ADDRESS": dev_server.address,
        "TEMPORAL_NAMESPACE": "default",
        "MULTINODE_TASK_QUEUE": f"test-{uuid.uuid4().hex[:12]}",
        "MULTINODE_HOME": str(home),
        "MULTINODE_GRACE_PERIOD_SECONDS": "5",
        # How long the SDK waits for a control-plane worker (registration's update, `.get`'s query). The
        # default 5 s is tight on a loaded CI machine, where a fresh worker's first workflow task can take
        # seconds and a slow query silently degrades `.get` (no executions); waiting longer costs nothing.
        # Tests that exercise a missing worker set their own shorter wait.
        "MULTINODE_WORKER_WAIT_SECONDS": "30",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    for key in [k for k in os.environ if k.startswith("TEMPORAL_") and k not in env]:
        monkeypatch.delenv(key)
    return MultinodeSettings.from_env()


@pytest.fixture
def no_containers_left(settings: MultinodeSettings) -> Iterator[None]:
    """Fail a test that leaves a container running, and kill what it left."""
    yield
    provisioner = LocalProvisioner(settings.home)
    left = provisioner.running_handles()
    for handle in left:
        provisioner.stop(handle)
    assert not left, f"containers left running: {left}"


@pytest.fixture
def worker(settings: MultinodeSettings, no_containers_left: None) -> Iterator[ThreadWorker]:
    w = ThreadWorker(settings)
    yield w
    w.stop()


@pytest.fixture
def project_name(request: pytest.FixtureRequest) -> str:
    return f"{request.node.name[:40].replace('[', '-').replace(']', '')}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def register(settings: MultinodeSettings, worker: ThreadWorker, project_name: str, tmp_path: Path):  # noqa: ANN201
    """``register(files_or_path, project=None) -> VersionRecord``."""

    def _register(tasks: dict[str, str] | Path, project: str | None = None) -> VersionRecord:
        folder = tasks if isinstance(tasks, Path) else write_tasks(tmp_path / f"tasks-{uuid.uuid4().hex[:6]}", tasks)
        return asyncio.run(register_async(folder, project or project_name, settings))

    return _register
