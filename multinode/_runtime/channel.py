"""Messages between a container's agent and the process that runs the user's code.

One stream socket (a ``socketpair``) carries frames both ways: a 4-byte length, a JSON header, then
an optional binary body (a protobuf message, for Temporal calls) whose length the header gives. Frames
from the user's side are untrusted: their size is bounded and anything malformed ends the channel.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from typing import Any

MAX_HEADER_BYTES = 4 * 1024 * 1024
"""Largest header accepted (a result or a progress value is at most 250,000 characters of JSON)."""
MAX_BODY_BYTES = 8 * 1024 * 1024
"""Largest body accepted (Temporal's own request limit is 4 MB)."""

_LENGTHS = struct.Struct("!II")


class ChannelClosed(Exception):
    """The other side closed the channel, or broke its protocol (the reason is the message)."""


class Channel:
    """Frames over a connected stream socket; ``send`` may be called from any thread, ``receive`` from one."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._send_lock = threading.Lock()

    def send(self, header: dict[str, Any], body: bytes = b"") -> None:
        data = json.dumps(header, separators=(",", ":")).encode()
        with self._send_lock:
            try:
                self.sock.sendall(_LENGTHS.pack(len(data), len(body)) + data + body)
            except OSError as exc:
                raise ChannelClosed(f"the other side is gone ({exc})") from exc

    def receive(self) -> tuple[dict[str, Any], bytes]:
        header_size, body_size = _LENGTHS.unpack(self._read(_LENGTHS.size))
        if header_size > MAX_HEADER_BYTES or body_size > MAX_BODY_BYTES:
            raise ChannelClosed(f"a message of {header_size + body_size} bytes is over the channel's limit")
        try:
            header = json.loads(self._read(header_size))
        except ValueError as exc:
            raise ChannelClosed("a message that is not JSON") from exc
        if not isinstance(header, dict) or not isinstance(header.get("op"), str):
            raise ChannelClosed("a message without an operation")
        return header, self._read(body_size)

    def _read(self, size: int) -> bytes:
        chunks = []
        left = size
        while left:
            try:
                chunk = self.sock.recv(min(left, 1 << 20))
            except OSError as exc:
                raise ChannelClosed(f"the other side is gone ({exc})") from exc
            if not chunk:
                raise ChannelClosed("the other side closed the channel")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
