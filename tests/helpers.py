"""Test helpers: polling instead of sleeping, tasks folders, a control-plane worker in a thread."""

from __future__ import annotations

import asyncio
import textwrap
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

from multinode._client import connect
from multinode._registry import check_control_plane
from multinode._settings import MultinodeSettings
from multinode.control_plane.worker import run_worker

T = TypeVar("T")


def assert_eventually(check: Callable[[], T], *, timeout: float = 30.0, interval: float = 0.1, message: str = "") -> T:
    """Call ``check`` until it returns a truthy value without raising AssertionError; return that value."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            value = check()
            if value:
                return value
        except AssertionError as exc:
            last = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {timeout} s: {message or check}") from last
        time.sleep(interval)


def wait_for_worker(settings: MultinodeSettings, timeout: float = 90.0) -> None:
    """Wait until a control-plane worker polls the settings' task queue: a worker process (``mn worker``)
    takes seconds to start, many more on a loaded machine. Temporal remembers pollers for minutes, so
    this says nothing on a queue that a worker now stopped polled."""

    async def polled() -> None:
        client = await connect(settings)
        await check_control_plane(client, settings.model_copy(update={"worker_wait_seconds": timeout}))

    asyncio.run(polled())


def write_tasks(root: Path, files: dict[str, str]) -> Path:
    """Write a tasks folder: ``{"main.py": source, ...}`` (sources are dedented)."""
    root.mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).lstrip("\n"))
    return root


class ThreadWorker:
    """A real control-plane worker running on its own event loop in a background thread."""

    def __init__(self, settings: MultinodeSettings) -> None:
        self.settings = settings
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._stop: asyncio.Event = self._call(self._make_event)
        started = threading.Event()
        self._future: Future[None] = asyncio.run_coroutine_threadsafe(
            run_worker(settings, self._stop, started), self._loop
        )
        while not started.wait(0.05):
            if self._future.done():
                self._future.result()  # raises the start-up error
        self.running = True

    @staticmethod
    async def _make_event() -> asyncio.Event:
        return asyncio.Event()

    def _call(self, fn: Callable[[], Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(fn(), self._loop).result()

    def stop(self) -> None:
        if not self.running:
            return
        self.running = False
        self._loop.call_soon_threadsafe(self._stop.set)
        try:
            self._future.result(timeout=60)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()


def workflow_types(settings: MultinodeSettings) -> list[str]:
    """The type of every workflow on the settings' task queue (running or closed), sorted."""

    async def types() -> list[str]:
        client = await connect(settings)
        return sorted([wf.workflow_type async for wf in client.list_workflows(f"TaskQueue = '{settings.task_queue}'")])

    return asyncio.run(types())
