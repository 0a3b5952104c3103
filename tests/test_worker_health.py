"""The control-plane worker's health check: ``/healthz`` on 127.0.0.1 and the module ECS runs against it."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from typing import Any

import pytest

from multinode._settings import MultinodeSettings
from multinode.activities._blocking import BlockingExecutor
from multinode.control_plane import health
from multinode.errors import ConfigurationError
from tests.conftest import free_port
from tests.helpers import ThreadWorker, assert_eventually

pytestmark = pytest.mark.timeout(60)


async def answered(port: int) -> tuple[bool, dict[str, Any]]:
    healthy, said = await asyncio.to_thread(health.check, port)
    return healthy, json.loads(said)


async def probe_ok() -> None:
    return None


async def test_healthy_worker_answers_200_with_its_load() -> None:
    executor = BlockingExecutor(3)
    async with health.serving(0, probe_ok, executor.load) as server:
        healthy, body = await answered(server.port)
        assert healthy and body["healthy"] is True and body["problems"] == []
        assert body["blocking_calls"]["threads"] == 3 and body["blocking_calls"]["queued"] == 0
        assert body["event_loop_seconds"] < health.LOOP_ANSWER_SECONDS
        other = await asyncio.to_thread(_get, server.port, "/other")
        assert other[0] == 404
    executor.shutdown()


async def test_a_stuck_event_loop_is_answered_503() -> None:
    executor = BlockingExecutor(1)
    async with health.serving(0, probe_ok, executor.load) as server:
        result: list[tuple[bool, str]] = []
        done = threading.Event()

        def ask() -> None:
            result.append(health.check(server.port))
            done.set()

        threading.Thread(target=ask, daemon=True).start()
        assert done.wait(10)  # blocks the loop on purpose: the health server, in its thread, must say so
        healthy, said = result[0]
        assert not healthy and "the event loop did not answer within 1 s" in json.loads(said)["problems"]
        assert (await answered(server.port))[0]  # the loop runs again
    executor.shutdown()


async def test_temporal_silent_for_too_long_is_503_until_it_answers_again() -> None:
    executor = BlockingExecutor(1)
    failing = True

    async def probe() -> None:
        if failing:
            raise ConnectionError("Temporal unreachable")

    async with health.serving(0, probe, executor.load, stale_seconds=0.2, probe_seconds=0.02) as server:
        body: dict[str, Any] = {}
        while not body.get("problems"):
            healthy, body = await answered(server.port)
        assert not healthy and body["problems"][0].startswith("Temporal has not answered for")
        assert "ConnectionError: Temporal unreachable" in body["problems"][0]
        failing = False
        while not healthy:
            healthy, body = await answered(server.port)
        assert body["temporal_answered_seconds_ago"] < 1
    executor.shutdown()


async def test_the_health_module_exits_0_only_on_200() -> None:
    executor = BlockingExecutor(1)
    async with health.serving(0, probe_ok, executor.load) as server:
        env = {**os.environ, health.ENV_HEALTH_PORT: str(server.port)}
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "multinode.control_plane.health", env=env, stdout=subprocess.PIPE
        )
        out, _ = await process.communicate()
        assert process.returncode == 0 and json.loads(out)["healthy"] is True
        port = server.port
    executor.shutdown()
    assert health.main({health.ENV_HEALTH_PORT: str(port)}) == 1  # nobody listens any more
    assert health.main({}) == 1
    assert health.main({health.ENV_HEALTH_PORT: "http"}) == 1


def test_health_port_setting() -> None:
    assert health.health_port({}) is None and health.health_port({health.ENV_HEALTH_PORT: " "}) is None
    assert health.health_port({health.ENV_HEALTH_PORT: "8079"}) == 8079
    for wrong in ("0", "65536", "eighty"):
        with pytest.raises(ConfigurationError, match="MULTINODE_WORKER_HEALTH_PORT=.*unset it"):
            health.health_port({health.ENV_HEALTH_PORT: wrong})


async def test_a_taken_port_is_a_clear_error() -> None:
    executor = BlockingExecutor(1)
    async with health.serving(0, probe_ok, executor.load) as server:
        with pytest.raises(ConfigurationError, match="Cannot serve the health check on 127.0.0.1"):
            async with health.serving(server.port, probe_ok, executor.load):
                pass
    executor.shutdown()


def test_mn_worker_serves_its_health_check(settings: MultinodeSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv(health.ENV_HEALTH_PORT, str(port))
    monkeypatch.setenv("MULTINODE_PROVISIONER_THREADS", "5")
    worker = ThreadWorker(settings)
    try:

        def probed() -> dict[str, Any] | None:
            healthy, said = health.check(port)
            body: dict[str, Any] = json.loads(said)
            assert healthy, body
            return body if body["temporal_answers"] >= 1 else None  # GetSystemInfo answered

        body = assert_eventually(probed, timeout=20)
        assert body["temporal_answered_seconds_ago"] < health.DEFAULT_TEMPORAL_STALE_SECONDS
        assert body["blocking_calls"]["threads"] == 5
    finally:
        worker.stop()
    assert_eventually(lambda: not health.check(port)[0])


def _get(port: int, path: str) -> tuple[int, bytes]:
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
