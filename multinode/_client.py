"""Temporal connections for the SDK: one client per event loop, and a portal for the sync API."""

from __future__ import annotations

import asyncio
import atexit
import threading
import weakref
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from multinode._settings import MultinodeSettings
from multinode.errors import MultinodeError, TemporalUnreachableError

CONNECT_TIMEOUT_SECONDS = 10.0
"""How long to try to reach Temporal before failing with advice on how to start it."""

_T = TypeVar("_T")
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, Client]] = weakref.WeakKeyDictionary()


async def get_client(settings: MultinodeSettings) -> Client:
    """A connected client for the running event loop (Temporal clients are bound to their loop)."""
    loop = asyncio.get_running_loop()
    per_loop = _clients.setdefault(loop, {})
    key = settings.model_dump_json(include={"temporal_profile"})
    client = per_loop.get(key)
    if client is None:
        client = await connect(settings)
        per_loop[key] = client
    return client


async def connect(settings: MultinodeSettings) -> Client:
    try:
        return await asyncio.wait_for(Client.connect(**settings.connect_kwargs()), CONNECT_TIMEOUT_SECONDS)
    except asyncio.TimeoutError as exc:
        raise TemporalUnreachableError(
            settings.temporal_address, settings.temporal_namespace, f"no answer within {CONNECT_TIMEOUT_SECONDS:g} s"
        ) from exc
    except (RuntimeError, OSError, RPCError) as exc:
        raise TemporalUnreachableError(settings.temporal_address, settings.temporal_namespace, _short(exc)) from exc


def _short(exc: BaseException) -> str:
    text = str(exc)
    for marker, summary in (("ConnectionRefused", "connection refused"), ("dns error", "unknown host")):
        if marker in text:
            return summary
    return text.splitlines()[0][:160] if text else type(exc).__name__


def is_not_found(exc: BaseException) -> bool:
    return isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND


class _Portal:
    """A private event loop on a daemon thread, where the sync API runs its coroutines.

    It lets sync methods work from anywhere, including from inside a running event loop (a Jupyter
    cell, an async web handler) where ``asyncio.run`` would refuse.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def _ensure(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._thread is None or not self._thread.is_alive():
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, name="multinode-portal", daemon=True)
                thread.start()
                self._loop, self._thread = loop, thread
                atexit.register(self.close)
            return self._loop

    def close(self) -> None:
        """Stop the loop before the interpreter tears down (Temporal's native client would crash)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
        _clients.pop(loop, None)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)

    def run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        loop = self._ensure()
        if threading.current_thread() is self._thread:
            coro.close()
            raise MultinodeError(
                "A sync Multinode method was called from an async one of its own; use the *_async twin."
            )
        future: Future[_T] = asyncio.run_coroutine_threadsafe(coro, loop)
        try:
            return future.result()
        except KeyboardInterrupt:
            future.cancel()
            raise


_portal = _Portal()


def run_sync(coro: Coroutine[Any, Any, _T]) -> _T:
    return _portal.run(coro)
