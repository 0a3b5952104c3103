"""Temporal connections for the SDK: one client per process and connection, and a portal for the sync API."""

from __future__ import annotations

import asyncio
import atexit
import dataclasses
import functools
import hashlib
import ipaddress
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from temporalio.client import Client
from temporalio.converter import DataConverter, DefaultFailureConverterWithEncodedAttributes
from temporalio.service import RPCError, RPCStatusCode

from multinode import _native
from multinode._codec import EncryptionCodec, KeylessPayloadConverter
from multinode._settings import MultinodeSettings
from multinode.errors import ConfigurationError, MultinodeError, TemporalUnreachableError

CONNECT_TIMEOUT_SECONDS = 10.0
"""How long to try to reach Temporal before failing with advice on how to start it."""

_T = TypeVar("_T")
_clients: dict[str, Future[Client]] = {}
_clients_lock = threading.Lock()
_container_client: Client | None = None


def use_container_client(client: Client) -> None:
    """Inside a container, every SDK call goes through this client (its agent's; see _runtime/user.py)."""
    global _container_client
    _container_client = client


async def get_client(settings: MultinodeSettings) -> Client:
    """The process's client for these connection settings, connected on first use.

    A Temporal client is not bound to an event loop (each call completes on the loop that awaits
    it), so one client serves every loop and thread, however many ``asyncio.run`` calls a program makes.
    """
    if _container_client is not None:
        return _container_client
    _register_exit_hook()
    _native.track_running_loop()
    # Keys change what a client encodes and can decode: a client per key list too (hashed, not kept).
    keys = hashlib.sha256(settings.encryption_keys.get_secret_value().encode()).hexdigest()
    key = settings.model_dump_json(include={"temporal_profile", "encryption_accept_plain"}) + keys
    with _clients_lock:
        pending = _clients.get(key)
        owner = pending is None
        if pending is None:
            pending = _clients[key] = Future()
    if owner:
        try:
            client = await connect(settings)
        except BaseException as exc:
            with _clients_lock:
                del _clients[key]  # the next call tries again
            pending.set_exception(exc)
            raise
        _native.keep_forever(client)  # see multinode/_native.py
        pending.set_result(client)
        return client
    return await asyncio.wrap_future(pending)


_exit_hook_registered = False


def _register_exit_hook() -> None:
    """At exit: stop the sync API's loop, then let native threads finish with the SDK's loops."""
    global _exit_hook_registered
    with _clients_lock:
        if not _exit_hook_registered:
            _exit_hook_registered = True
            atexit.register(_at_exit)


def data_converter(codec: EncryptionCodec) -> DataConverter:
    """With keys, the default converter with ``codec`` on every payload, and error messages and stack traces
    moved into an (encrypted) payload too: Temporal keeps only "Encoded failure" in plain text. Without,
    no codec at all (the SDK then skips a pass over every payload of every workflow activation: measured
    as ~13% of throughput), only a converter that refuses encrypted payloads with a clear error."""
    if codec.encrypts:
        return dataclasses.replace(
            DataConverter.default,
            payload_codec=codec,
            failure_converter_class=DefaultFailureConverterWithEncodedAttributes,
        )
    return dataclasses.replace(DataConverter.default, payload_converter_class=KeylessPayloadConverter)


def _at_exit() -> None:
    _portal.close()
    _native.wait_for_native_threads()


async def connect(settings: MultinodeSettings, timeout: float = CONNECT_TIMEOUT_SECONDS) -> Client:
    try:
        kwargs = settings.connect_kwargs()
    except OSError as exc:  # a certificate file named in the TLS settings cannot be read
        raise ConfigurationError(f"Cannot read a file of the Temporal TLS settings: {exc}") from exc
    kwargs["data_converter"] = data_converter(settings.payload_codec())
    try:
        return await asyncio.wait_for(Client.connect(**kwargs), timeout)
    except asyncio.TimeoutError as exc:
        raise unreachable_error(settings, f"no answer within {timeout:g} s") from exc
    except (RuntimeError, OSError, RPCError) as exc:
        cause = _short(exc)
        if cause in (_NOT_TEMPORAL, _CLOSED):
            answer = await _first_bytes(settings.temporal_address)
            if answer.startswith(b"HTTP/"):
                cause = _HTTP_SERVER
            elif answer:
                cause = _NOT_TEMPORAL  # it said something, but not gRPC (seen as a closed connection when
                # the client noticed the close first)
        raise unreachable_error(settings, cause) from exc


async def _first_bytes(address: str) -> bytes:
    """What a server at ``address`` answers first to an HTTP/1 request (b"" if nothing): an HTTP server
    answers "HTTP/", another protocol its own greeting; the gRPC client reports either as a protocol
    error or as a closed connection, depending on which it notices first."""
    host, _, port = address.rpartition(":")
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host.strip("[]"), int(port)), 2)
    except (OSError, ValueError, asyncio.TimeoutError):
        return b""
    try:
        writer.write(f"HEAD / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(5), 2)
    except (OSError, asyncio.TimeoutError):
        return b""
    finally:
        writer.close()


_REFUSED = "connection refused"
_UNKNOWN_HOST = "unknown host"
_NOT_TEMPORAL = "something answered, but not as a Temporal frontend: it does not speak gRPC"
_HTTP_SERVER = "an HTTP server answered, not a Temporal frontend (the Temporal Web UI, or another web server)"
_CLOSED = "the server closed the connection without answering"
_CAUSES = (
    ("ConnectionRefused", _REFUSED),
    ("dns error", _UNKNOWN_HOST),
    (
        "UnknownIssuer",
        "the server's TLS certificate is not signed by a trusted CA (set TEMPORAL_TLS_SERVER_CA_CERT_PATH)",
    ),
    ("NotValidForName", "the server's TLS certificate does not match its name (set TEMPORAL_TLS_SERVER_NAME)"),
    ("InvalidContentType", "the server does not speak TLS (unset TEMPORAL_TLS)"),
    ("close_notify", "the server closed the TLS handshake (does it require a client certificate?)"),
    ("unexpected EOF", "the server closed the connection (does it require TLS or a client certificate?)"),
    # What came back is no HTTP/2 (so no gRPC either): an HTTP/1 server or another protocol.
    ("h2 protocol error", _NOT_TEMPORAL),
    ("FRAME_SIZE_ERROR", _NOT_TEMPORAL),
    # A closed connection shows as one or the other, depending on whether the client was writing.
    ("transport error", _CLOSED),
    ("connection closed", _CLOSED),
    # ... or, on a loaded machine, as the call cancelled by the client's HTTP/2 layer when the
    # connection dropped under it (seen once in five CI runs).
    ("operation was canceled", _CLOSED),
)
_CHECK_ADDRESS = (
    "Check TEMPORAL_ADDRESS: it must name the Temporal frontend's gRPC port (usually 7233), not the Web UI's (8233)."
)


def _short(exc: BaseException) -> str:
    """A readable cause; Temporal's native client reports connection failures as long debug strings."""
    text = " ".join(str(e) for e in _chain(exc))
    for marker, summary in _CAUSES:
        if marker in text:
            return summary
    first = str(exc)
    return first.splitlines()[0][:160] if first else type(exc).__name__


def unreachable_error(settings: MultinodeSettings, cause: str) -> TemporalUnreachableError:
    """The error for a failed connection, with the advice that fits its cause: ``mn dev`` only helps
    when nothing listens on a local address."""
    address = settings.temporal_address
    if cause == _REFUSED and is_local_address(address):
        advice = "Start the local stack with `mn dev`, or point TEMPORAL_ADDRESS at your cluster."
    elif cause == _UNKNOWN_HOST:
        advice = "Check the host name in TEMPORAL_ADDRESS."
    elif "(set TEMPORAL_" in cause or "(unset TEMPORAL_" in cause:
        advice = ""  # a TLS handshake went far enough to name the setting to change
    elif cause == _CLOSED:
        advice = f"{_CHECK_ADDRESS} If it does, the server may require TLS (TEMPORAL_TLS) or a client certificate."
    else:
        advice = _CHECK_ADDRESS
    return TemporalUnreachableError(address, settings.temporal_namespace, cause, advice)


def is_local_address(address: str) -> bool:
    """Whether ``host:port`` names this machine (where ``mn dev`` can start a server)."""
    host, sep, _ = address.rpartition(":")
    host = (host if sep else address).strip("[]").lower()
    if host in ("", "localhost") or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_unspecified


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
            if is_unavailable(exc):
                raise unreachable_error(settings, _short(exc)) from exc
            raise MultinodeError(f"Temporal refused the request ({exc.status.name}): {exc.message}") from exc

    return wrapper


def is_not_found(exc: BaseException) -> bool:
    """NOT_FOUND: no such workflow, or (for a cancel or a signal) one that has already completed."""
    return isinstance(exc, RPCError) and exc.status == RPCStatusCode.NOT_FOUND


def is_unreachable(exc: BaseException) -> bool:
    """Temporal is away (restarting, say): UNAVAILABLE, or the connection broke during the call."""
    return isinstance(exc, RPCError) and (exc.status == RPCStatusCode.UNAVAILABLE or _is_transport_failure(exc))


def is_unavailable(exc: BaseException) -> bool:
    """No answer came: Temporal is away (``is_unreachable``), or the call's deadline passed first."""
    return is_unreachable(exc) or (isinstance(exc, RPCError) and exc.status == RPCStatusCode.DEADLINE_EXCEEDED)


def _is_transport_failure(exc: RPCError) -> bool:
    # Temporal's native client reports a connection that broke during a call as UNKNOWN ("transport
    # error"), a code that tells it from no other failure: the one place an RPC error's text is read.
    return exc.status == RPCStatusCode.UNKNOWN and "transport" in exc.message.lower()


def is_missing_search_attribute(exc: BaseException) -> bool:
    """The namespace lacks a search attribute the request sets (Multinode's are not registered there)."""
    # INVALID_ARGUMENT alone is any malformed request; the server's text names the attribute's lack
    # ("Namespace default has no mapping defined for search attribute MultinodeProject").
    return (
        isinstance(exc, RPCError)
        and exc.status == RPCStatusCode.INVALID_ARGUMENT
        and "search attribute" in exc.message.lower()
    )


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
                _register_exit_hook()
            return self._loop

    def close(self) -> None:
        """Stop the loop before the interpreter tears down (Temporal's native client would crash)."""
        with self._lock:
            loop, thread = self._loop, self._thread
            self._loop = self._thread = None
        if loop is None or thread is None:
            return
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
