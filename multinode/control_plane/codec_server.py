"""A Temporal remote codec server: lets the Temporal Web UI and the ``temporal`` CLI show encrypted payloads.

It answers Temporal's codec protocol: ``POST .../encode`` and ``POST .../decode`` with the JSON body
``{"payloads": [...]}`` (each payload in protobuf JSON form) and the same shape back. Any path prefix is
accepted (the UI calls ``<endpoint>/decode``); the ``X-Namespace`` header is ignored. Browsers get CORS
headers only for the configured Web UI origins, and a request that carries any other ``Origin`` is refused.

Security: the server decrypts for whoever can reach it, holding every key of ``MULTINODE_ENCRYPTION_KEYS``.
It binds to 127.0.0.1 by default; do not expose it on a shared network without putting an authenticating
proxy in front of it.
"""

from __future__ import annotations

import json
import socket
import sys
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from google.protobuf import json_format
from temporalio.api.common.v1 import Payloads

from multinode._codec import EncryptionCodec, PayloadDecryptionError
from multinode.errors import ConfigurationError

DEFAULT_ORIGINS = ("http://localhost:8233", "http://127.0.0.1:8233")  # the Web UI of `mn dev`, `temporal server`
MAX_BODY_BYTES = 64 * 1024 * 1024
ALLOW_HEADERS = "Content-Type, X-Namespace, Authorization"


def normalize_origin(origin: str) -> str:
    """``scheme://host[:port]`` as browsers send it in ``Origin``; ConfigurationError for anything else."""
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/") or parts.query:
        raise ConfigurationError(
            f"web origin {origin!r} is not an origin such as http://localhost:8233 (scheme, host, port; no path).",
            parameter="origins",
        )
    return f"{parts.scheme}://{parts.netloc}".lower()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    codec: EncryptionCodec
    origins: frozenset[str]
    max_body_bytes: int

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a client that hung up is not worth a line
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive: every answer has a Content-Length

    def log_message(self, format: str, *args: Any) -> None:  # quiet: no line per request
        pass

    def do_OPTIONS(self) -> None:  # CORS preflight
        self._send(204, None)

    def do_POST(self) -> None:
        operation = urlsplit(self.path).path.rstrip("/").rpartition("/")[2]
        if operation not in ("encode", "decode"):
            self._error(404, f"no such endpoint {self.path!r}: POST .../encode or .../decode")
            return
        origin = self.headers.get("Origin")
        if origin is not None and not self._allowed(origin):
            self._error(403, f"origin {origin!r} is not allowed: start the codec server with --web-origin {origin}")
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._error(411, "a Content-Length header is required")
            return
        if length < 0 or length > self.server.max_body_bytes:
            self._error(413, f"the body is over the limit of {self.server.max_body_bytes} bytes")
            return
        body = self.rfile.read(length)
        try:
            document = json.loads(body)
            if not isinstance(document, dict) or not isinstance(document.get("payloads"), list):
                raise ValueError('the body must be a JSON object {"payloads": [...]}')
            payloads = Payloads()
            json_format.ParseDict(document, payloads)
        except (ValueError, json_format.ParseError) as exc:  # JSONDecodeError and UnicodeError are ValueErrors
            self._error(400, f"bad request: {exc}")
            return
        codec = self.server.codec
        convert = codec.encrypt if operation == "encode" else codec.decrypt
        try:
            converted = [convert(p) for p in payloads.payloads]
        except PayloadDecryptionError as exc:
            self._error(400, str(exc))
            return
        except Exception as exc:
            print(f"codec server: {operation} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            self._error(500, f"{operation} failed: {type(exc).__name__}")
            return
        self._send(200, {"payloads": [json_format.MessageToDict(p) for p in converted]})

    def _allowed(self, origin: str) -> bool:
        try:
            return normalize_origin(origin) in self.server.origins
        except ConfigurationError:
            return False

    def _error(self, status: int, message: str) -> None:
        self.close_connection = True  # the body may be unread: it must not be taken for the next request
        self._send(status, {"error": message})

    def _send(self, status: int, document: dict[str, Any] | None) -> None:
        body = b"" if document is None else json.dumps(document).encode()
        self.send_response(status)
        origin = self.headers.get("Origin")
        if origin is not None and self._allowed(origin):
            self.send_header("Access-Control-Allow-Origin", origin)
            self.send_header("Access-Control-Allow-Methods", "POST, OPTIONS")
            self.send_header("Access-Control-Allow-Headers", ALLOW_HEADERS)
            self.send_header("Access-Control-Allow-Credentials", "true")
            self.send_header("Access-Control-Max-Age", "600")
            if self.headers.get("Access-Control-Request-Private-Network") == "true":
                self.send_header("Access-Control-Allow-Private-Network", "true")
        self.send_header("Vary", "Origin")
        if document is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


class CodecServer:
    """Serves ``codec`` over HTTP on a daemon thread: ``start()``, ``url``, ``stop()``, or ``with CodecServer(...)``."""

    def __init__(
        self,
        codec: EncryptionCodec,
        host: str = "127.0.0.1",
        port: int = 0,
        origins: Iterable[str] = DEFAULT_ORIGINS,
        max_body_bytes: int = MAX_BODY_BYTES,
    ) -> None:
        self.codec = codec
        self.host = host
        self.port = port
        self.origins = frozenset(normalize_origin(o) for o in origins)
        self.max_body_bytes = max_body_bytes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the codec server is not started")
        port = self._server.server_address[1]
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{port}"

    def start(self) -> CodecServer:
        """Bind and serve; OSError when the address cannot be bound (a port in use)."""
        if self._server is not None:
            return self
        server = (_Server6 if ":" in self.host else _Server)((self.host, self.port), _Handler)
        server.codec = self.codec
        server.origins = self.origins
        server.max_body_bytes = self.max_body_bytes
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="codec-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
        self._server = self._thread = None

    def __enter__(self) -> CodecServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
