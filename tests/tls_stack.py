"""A Temporal reachable only over TLS / mTLS, for tests: a throwaway PKI, TLS proxies in front of the dev
server, and a control-plane worker configured only by Temporal's conventions (fixtures, registered in
conftest.py)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from multinode._client import connect
from multinode._protocol import VersionRecord
from multinode._settings import MultinodeSettings
from multinode.control_plane.devserver import DevServer
from multinode.control_plane.registration import register_async
from multinode.errors import TemporalUnreachableError
from tests.helpers import ThreadWorker, assert_eventually
from tests.tls_proxy import SERVER_NAME, TestPKI, TLSProxy, make_pki


@dataclass
class Stack:
    settings: MultinodeSettings
    worker: ThreadWorker

    def register(self, folder: Path, project: str) -> VersionRecord:
        return asyncio.run(register_async(folder, project, self.settings))


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def answering_dev_server(dev_server: DevServer) -> DevServer:
    """The dev server once it answers gRPC (``DevServer.start`` returns as soon as its port is open,
    while its frontend may still answer "Frontend is not healthy yet"): a refusal seen through the
    proxy must come from TLS, never from a server still starting."""

    def answers() -> bool:
        try:
            asyncio.run(connect(MultinodeSettings(temporal_profile={"address": dev_server.address})))
        except TemporalUnreachableError as exc:
            raise AssertionError(str(exc)) from exc
        return True

    assert_eventually(answers, timeout=60, interval=0.2, message="the dev server answers")
    return dev_server


@pytest.fixture
def proxies(answering_dev_server: DevServer, pki: TestPKI) -> Iterator[Callable[..., TLSProxy]]:
    """``proxies(require_client_cert=False) -> TLSProxy`` in front of the dev server; all closed after."""
    dev_server = answering_dev_server
    started: list[TLSProxy] = []

    def _start(*, require_client_cert: bool = False) -> TLSProxy:
        proxy = TLSProxy(dev_server.address, pki, require_client_cert=require_client_cert).start()
        started.append(proxy)
        return proxy

    yield _start
    for proxy in started:
        thread = proxy._thread
        proxy.close()
        assert thread is not None and not thread.is_alive()
        assert proxy.open_connections() == 0
    assert not [t for t in threading.enumerate() if t.name.startswith("tls-proxy-")]


@pytest.fixture
def stack(
    settings: MultinodeSettings,
    no_containers_left: None,
    proxies: Callable[..., TLSProxy],
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Callable[[dict[str, str | None]], Stack]]:
    """``stack(env) -> Stack``: apply ``env`` (None unsets), load the settings from it, start a worker.

    Builds on the ``settings`` fixture (fresh home and task queue, other TEMPORAL_* variables unset);
    the worker stops before the proxies close, and no container may be left running.
    """
    workers: list[ThreadWorker] = []

    def _start(env: dict[str, str | None]) -> Stack:
        set_env(monkeypatch, env)
        secure = MultinodeSettings.from_env()
        assert (secure.home, secure.task_queue) == (settings.home, settings.task_queue)
        worker = ThreadWorker(secure)
        workers.append(worker)
        return Stack(secure, worker)

    yield _start
    for worker in workers:
        worker.stop()


def set_env(monkeypatch: pytest.MonkeyPatch, env: dict[str, str | None]) -> None:
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)


def mtls_env(proxy: TLSProxy, pki: TestPKI) -> dict[str, str | None]:
    return {
        "TEMPORAL_ADDRESS": proxy.address,
        "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca_cert),
        "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.client_cert),
        "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.client_key),
        "TEMPORAL_TLS_SERVER_NAME": SERVER_NAME,
    }
