"""Temporal connections for the SDK: one client per event loop, and a portal for the sync API."""

from __future__ import annotations

import asyncio
import atexit
import functools
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from multinode._settings import MultinodeSettings
from multinode.errors import ConfigurationError, MultinodeError, TemporalUnreachableError

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
        kwargs = settings.connect_kwargs()
    except OSError as exc:  # a certificate file named in the TLS settings cannot be read
        raise ConfigurationError(f"Cannot read a file of the Temporal TLS settings: {exc}") from exc
    try:
        return await asyncio.wait_for(Client.connect(**kwargs), CONNECT_TIMEOUT_SECONDS)
    except asyncio.TimeoutError as exc:
        raise TemporalUnreachableError(
            settings.temporal_address, settings.temporal_namespace, f"no answer within {CONNECT_TIMEOUT_SECONDS:g} s"
        ) from exc
    except (RuntimeError, OSError, RPCError) as exc:
        raise TemporalUnreachableError(settings.temporal_address, settings.temporal_namespace, _short(exc)) from exc


_CAUSES = (
    ("ConnectionRefused", "connection refused"),
    ("dns error", "unknown host"),
    (
        "UnknownIssuer",
        "the server's TLS certificate is not signed by a trusted CA (set TEMPORAL_TLS_SERVER_CA_CERT_PATH)",
    ),
    ("NotValidForName", "the server's TLS certificate does not match its name (set TEMPORAL_TLS_SERVER_NAME)"),
    ("InvalidContentType", "the server does not speak TLS (unset TEMPORAL_TLS)"),
    ("close_notify", "the server closed the TLS handshake (does it require a client certificate?)"),
    ("unexpected EOF", "the server closed the connection (does it require TLS or a client certificate?)"),
    ("transport error", "the connection failed (does the server require TLS or a client certificate?)"),
)


def _short(exc: BaseException) -> str:
    """A readable cause; Temporal's native client reports connection failures as long debug strings."""
    text = " ".join(str(e) for e in _chain(exc))
    for marker, summary in _CAUSES:
        if marker in text:
            return summary
    first = str(exc)
    return first.splitlines()[0][:160] if first else type(exc).__name__


def _chain(exc: BaseException | None) -> list[BaseException]:
    found: list[BaseException] = []
    while exc is not None and len(found) < 10:
        found.append(exc)
        exc = exc.__cause__ or exc.__context__
    return found


def rpc_boundary(method: Callable[..., Awaitable[_T]]) -> Callable[..., Coroutine[Any, Any, _T]]:
    """SDK methods raise Multinode errors, not Temporal's raw ``RPCError`` (the method's object must
    have ``settings``)."""

    @functools.wraps(method)
    async def wrapper(self: Any, *args: Any, **kwargs: Any) -> _T:
        try:
            return await method(self, *args, **kwargs)
        except RPCError as exc:
            settings: MultinodeSettings = self.settings
            if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
                raise TemporalUnreachableError(
                    settings.temporal_address, settings.temporal_namespace, _short(exc)
                ) from exc
            raise MultinodeError(f"Temporal refused the request ({exc.status.name}): {exc.message}") from exc

    return wrapper


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
