"""A TLS-terminating TCP proxy in front of the plaintext dev server, and a throwaway PKI for it.

``temporal server start-dev`` has no TLS option, so the TLS tests put this proxy in front of it: it
accepts TLS (ALPN ``h2``, as gRPC needs), optionally requires a client certificate signed by the test CA
(mTLS), and forwards the decrypted bytes to the dev server's gRPC port. It runs its own event loop on a
background thread, listens on 127.0.0.1 and a port the OS picks, records every handshake (SNI and
client certificate, or why it failed), and on ``close()`` leaves no thread, socket or task behind.

Requires ``cryptography`` (installed as a dependency of ``moto``, a dev dependency).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "temporal.test"
"""A name only the proxy's certificate carries (no DNS): reachable only through TEMPORAL_TLS_SERVER_NAME."""
CLIENT_NAME = "multinode-test-client"
"""Common name of the client certificate signed by the test CA."""
HANDSHAKE_TIMEOUT_SECONDS = 5.0


# --- certificates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class TestPKI:
    """PEM files of a throwaway CA, a server certificate, a client certificate and a rogue one."""

    __test__ = False  # not a pytest test class

    directory: Path
    ca_cert: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_client_cert: Path
    """A client certificate signed by another CA, which the proxy must refuse."""
    rogue_client_key: Path


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Multinode tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _certificate(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool = False,
    dns_names: Iterable[str] = (),
    ip_addresses: Iterable[str] = (),
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject if issuer is not None else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(
                issuer.public_key() if issuer is not None else key.public_key()  # type: ignore[arg-type]
            ),
            critical=False,
        )
    )
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate | None = None, key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    elif key is not None:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        path.chmod(0o600)
    return path


def make_pki(directory: Path, *, dns_names: Iterable[str] = ("localhost", SERVER_NAME)) -> TestPKI:
    """Generate the CA, the server certificate (``dns_names`` and 127.0.0.1) and client certificates."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca = _certificate(_name("Multinode test CA"), ca_key, None, ca_key, ca=True)
    server_key = _new_key()
    server = _certificate(
        _name(SERVER_NAME),
        server_key,
        ca,
        ca_key,
        dns_names=dns_names,
        ip_addresses=["127.0.0.1"],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
    )
    client_key = _new_key()
    client = _certificate(_name(CLIENT_NAME), client_key, ca, ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    rogue_ca_key = _new_key()
    rogue_ca = _certificate(_name("Rogue CA"), rogue_ca_key, None, rogue_ca_key, ca=True)
    rogue_key = _new_key()
    rogue = _certificate(
        _name("rogue-client"), rogue_key, rogue_ca, rogue_ca_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH
    )
    return TestPKI(
        directory=directory,
        ca_cert=_write(directory / "ca.pem", ca),
        server_cert=_write(directory / "server.pem", server),
        server_key=_write(directory / "server-key.pem", key=server_key),
        client_cert=_write(directory / "client.pem", client),
        client_key=_write(directory / "client-key.pem", key=client_key),
        rogue_client_cert=_write(directory / "rogue-client.pem", rogue),
        rogue_client_key=_write(directory / "rogue-client-key.pem", key=rogue_key),
    )


# --- the proxy ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handshake:
    """One TLS connection the proxy accepted."""

    sni: str | None
    """Server name the client asked for (None for an IP address: clients send no SNI then)."""
    client_common_name: str | None
    """Common name of the verified client certificate (None when none was required)."""
    alpn: str | None


class _Pump(asyncio.Protocol):
    """One side of a proxied connection: what it receives is written to the other side."""

    def __init__(self, proxy: TLSProxy) -> None:
        self.proxy = proxy
        self.transport: asyncio.Transport | None = None
        self.peer: _Pump | None = None
        self.pending: list[bytes] = []
        self.closed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.proxy._transports.add(transport)

    def data_received(self, data: bytes) -> None:
        peer = self.peer.transport if self.peer is not None else None
        if peer is None:
            self.pending.append(data)
        else:
            peer.write(data)

    def eof_received(self) -> bool:
        peer = self.peer.transport if self.peer is not None else None
        if peer is not None and peer.can_write_eof():
            peer.write_eof()
            # Half-close: keep the other direction open (a TLS transport cannot, and closes anyway).
            return self.transport is not None and self.transport.get_extra_info("sslcontext") is None
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.transport is not None:
            self.proxy._transports.discard(self.transport)
        self.closed.set()
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # Flow control: when one side cannot take more, stop reading from the other.
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def link(self, peer: _Pump) -> None:
        """Connect the two sides and flush what arrived before the other side was ready."""
        self.peer, peer.peer = peer, self
        for side in (self, peer):
            if side.pending and side.peer is not None and side.peer.transport is not None:
                side.peer.transport.write(b"".join(side.pending))
            side.pending.clear()


class _Downstream(_Pump):
    """The client's side: plain TCP until the proxy has upgraded it to TLS."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()  # the ClientHello is for the TLS layer start_tls puts in between
        self.proxy._spawn(self.proxy._serve(self))


class TLSProxy:
    """TLS (or mTLS) on 127.0.0.1:``port`` in front of ``upstream`` (a plaintext ``host:port``)."""

    def __init__(self, upstream: str, pki: TestPKI, *, require_client_cert: bool = False) -> None:
        host, _, port = upstream.rpartition(":")
        self.upstream_host, self.upstream_port = host, int(port)
        self.pki = pki
        self.require_client_cert = require_client_cert
        self.handshakes: list[Handshake] = []
        """Connections accepted, oldest first."""
        self.failures: list[str] = []
        """Why each refused connection failed its handshake (or could not reach the upstream)."""
        self.port = 0
        self._sni: dict[int, str | None] = {}
        self._context = self._server_context()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: set[asyncio.Transport] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.pki.server_cert, self.pki.server_key)
        context.set_alpn_protocols(["h2"])
        if self.require_client_cert:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(cafile=str(self.pki.ca_cert))

        def remember_sni(ssl_object: Any, server_name: str | None, _context: ssl.SSLContext) -> None:
            self._sni[id(ssl_object)] = server_name  # None too, so a reused id never keeps an old name

        context.sni_callback = remember_sni
        return context

    # --- lifecycle (called from the test's thread) ---

    def start(self) -> TLSProxy:
        loop = asyncio.new_event_loop()
        loop.set_exception_handler(lambda _loop, context: self.failures.append(str(context.get("message"))))
        thread = threading.Thread(target=loop.run_forever, name=f"tls-proxy-{id(self):x}", daemon=True)
        thread.start()
        self._loop, self._thread = loop, thread
        try:
            asyncio.run_coroutine_threadsafe(self._listen(), loop).result(timeout=10)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        if thread.is_alive():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(timeout=10)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
        assert not thread.is_alive(), "the TLS proxy's thread did not stop"
        loop.close()

    def __enter__(self) -> TLSProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open_connections(self) -> int:
        """Sockets the proxy holds (each proxied connection has two)."""
        return len(self._transports)

    # --- on the proxy's loop ---

    async def _listen(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _Downstream(self), "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, downstream: _Downstream) -> None:
        loop = asyncio.get_running_loop()
        plain = downstream.transport
        assert plain is not None
        try:
            secure = await loop.start_tls(
                plain, downstream, self._context, server_side=True, ssl_handshake_timeout=HANDSHAKE_TIMEOUT_SECONDS
            )
        except Exception as exc:  # noqa: BLE001 - an SSLError, a timeout, a reset: the client is refused
            self.failures.append(f"handshake: {exc!r}")
            plain.abort()
            self._transports.discard(plain)
            return
        if secure is None:  # the client went away during the handshake
            plain.abort()
            self._transports.discard(plain)
            return
        self._transports.discard(plain)
        self._transports.add(secure)
        downstream.transport = secure
        ssl_object = secure.get_extra_info("ssl_object")
        peer_cert = ssl_object.getpeercert() if ssl_object is not None else None
        common_name = None
        for rdn in (peer_cert or {}).get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    common_name = value
        self.handshakes.append(
            Handshake(
                sni=self._sni.pop(id(ssl_object), None),
                client_common_name=common_name,
                alpn=ssl_object.selected_alpn_protocol() if ssl_object is not None else None,
            )
        )
        upstream = _Pump(self)
        try:
            await loop.create_connection(lambda: upstream, self.upstream_host, self.upstream_port)
        except OSError as exc:
            self.failures.append(f"upstream: {exc!r}")
            secure.abort()
            return
        upstream.link(downstream)
        if downstream.closed.is_set():  # the client left while the upstream connection was opening
            assert upstream.transport is not None
            upstream.transport.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for transport in list(self._transports):
            transport.abort()
        for _ in range(10):  # let the aborted transports (and the TLS layers above them) call connection_lost
            await asyncio.sleep(0)
        if self._server is not None:
            await self._server.wait_closed()
        self._transports.clear()
        self._sni.clear()
