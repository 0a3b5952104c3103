"""Payload encryption: a Temporal payload codec (AES-256-GCM) so that arguments, results, progress and
error details are opaque in Temporal's database and history.

Keys come from ``MULTINODE_ENCRYPTION_KEYS``: a comma-separated list of ``KEY_ID:BASE64_KEY`` (32-byte
keys, ``mn encryption-key`` makes one). The first key encrypts; every listed key decrypts, chosen by the
key id each encrypted payload carries, so a key is rotated by putting a new one first and keeping the old
ones listed until nothing still running or kept in history needs them.

With keys, a payload read that is not encrypted is refused (someone able to write to Temporal's database
could otherwise substitute plain data, an invocation's input say, for what a client encrypted), unless
``MULTINODE_ENCRYPTION_ACCEPT_PLAIN=1``: for the time it takes to turn encryption on for a deployment
whose history still holds plain payloads. Without keys, payloads go out plain. Search attributes
(which Temporal must index) never pass through a codec.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from temporalio.api.common.v1 import Payload
from temporalio.converter import (
    CompositePayloadConverter,
    DefaultPayloadConverter,
    EncodingPayloadConverter,
    PayloadCodec,
)

from multinode.errors import ConfigurationError, MultinodeError

ENV_ENCRYPTION_KEYS = "MULTINODE_ENCRYPTION_KEYS"
ENV_ACCEPT_PLAIN = "MULTINODE_ENCRYPTION_ACCEPT_PLAIN"
ENCODING = b"binary/encrypted"
"""The ``encoding`` metadata of an encrypted payload (the Web UI shows such payloads as encoded)."""
KEY_ID_METADATA = "encryption-key-id"
NONCE_BYTES = 12
KEY_BYTES = 32
_KEY_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


class PayloadDecryptionError(MultinodeError, ValueError):
    """An encrypted payload that these keys cannot decrypt (an unknown key id, or tampered data)."""


@dataclass(frozen=True)
class EncryptionKey:
    key_id: str
    secret: bytes

    def __repr__(self) -> str:  # never print the secret
        return f"EncryptionKey({self.key_id!r})"


def parse_keys(text: str, *, name: str = ENV_ENCRYPTION_KEYS) -> tuple[EncryptionKey, ...]:
    """The keys ``text`` lists (``ID:BASE64,ID:BASE64``), first the one that encrypts; () for an empty text."""
    keys: list[EncryptionKey] = []
    for number, item in enumerate(part.strip() for part in text.split(",")):
        if not item:
            continue
        key_id, colon, encoded = item.partition(":")
        where = f"{name}: key {number + 1}"
        if not colon or not _KEY_ID.fullmatch(key_id):
            raise ConfigurationError(
                f"{where} is not KEY_ID:BASE64_KEY (a key id of letters, digits, '.', '_' or '-'). "
                "Run `mn encryption-key` to make one.",
                parameter=name,
            )
        try:
            secret = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ConfigurationError(f"{where} ({key_id!r}) is not valid base64.", parameter=name) from exc
        if len(secret) != KEY_BYTES:
            raise ConfigurationError(
                f"{where} ({key_id!r}) is {len(secret)} bytes; AES-256 keys are {KEY_BYTES} bytes. "
                "Run `mn encryption-key` to make one.",
                parameter=name,
            )
        if any(k.key_id == key_id for k in keys):
            raise ConfigurationError(f"{where}: key id {key_id!r} is listed twice.", parameter=name)
        keys.append(EncryptionKey(key_id, secret))
    return tuple(keys)


def new_key(key_id: str | None = None) -> str:
    """A fresh ``KEY_ID:BASE64_KEY`` (random 32 bytes; the id defaults to a random one)."""
    key_id = key_id or f"k{secrets.token_hex(4)}"
    if not _KEY_ID.fullmatch(key_id):
        raise ConfigurationError(
            f"key id {key_id!r}: use 1 to 64 letters, digits, '.', '_' or '-'.", parameter="key_id"
        )
    return f"{key_id}:{base64.b64encode(os.urandom(KEY_BYTES)).decode()}"


class EncryptionCodec(PayloadCodec):
    """AES-256-GCM over whole payloads (metadata and data); the key id is the associated data, so a
    payload cannot be passed off as encrypted with another key."""

    def __init__(self, keys: Sequence[EncryptionKey], *, accept_plain: bool = False) -> None:
        """Without keys, payloads go out plain and an encrypted one read is refused with a clear error
        (rather than the SDK's "Unknown payload encoding"). With keys, a plain one read is refused unless
        ``accept_plain``."""
        self._current = keys[0].key_id if keys else None
        self._accept_plain = accept_plain or not keys
        if keys:  # imported here: importing the SDK without encryption does not load `cryptography`
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM

            self._ciphers = {k.key_id: AESGCM(k.secret) for k in keys}
        else:
            self._ciphers = {}

    @property
    def encrypts(self) -> bool:
        return self._current is not None

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.encrypt(p) for p in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.decrypt(p) for p in payloads]

    def encrypt(self, payload: Payload) -> Payload:
        if self._current is None or payload.metadata.get("encoding") == ENCODING:
            return payload  # no key, or already encrypted (a payload relayed as it was read)
        nonce = os.urandom(NONCE_BYTES)
        key_id = self._current.encode()
        sealed = self._ciphers[self._current].encrypt(nonce, payload.SerializeToString(), key_id)
        return Payload(metadata={"encoding": ENCODING, KEY_ID_METADATA: key_id}, data=nonce + sealed)

    def decrypt(self, payload: Payload) -> Payload:
        if payload.metadata.get("encoding") != ENCODING:
            if self._accept_plain:
                return payload
            raise PayloadDecryptionError(
                f"a payload read from Temporal is not encrypted although {ENV_ENCRYPTION_KEYS} is set: it was "
                f"written without encryption, or by someone other than Multinode. Set {ENV_ACCEPT_PLAIN}=1 "
                "while history from before encryption is still read."
            )
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None and not self._ciphers:
            raise PayloadDecryptionError(
                f"a payload is encrypted (with key {key_id!r}), but {ENV_ENCRYPTION_KEYS} is not set: set it to "
                "the keys the control plane uses."
            )
        if cipher is None:
            raise PayloadDecryptionError(
                f"a payload is encrypted with key {key_id!r}, which {ENV_ENCRYPTION_KEYS} does not list "
                f"(it lists {', '.join(map(repr, self._ciphers))}): add that key after the current one."
            )
        from cryptography.exceptions import InvalidTag

        if len(payload.data) < NONCE_BYTES + 16:
            raise PayloadDecryptionError(f"a payload encrypted with key {key_id!r} is truncated")
        try:
            plain = cipher.decrypt(payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:], key_id.encode())
        except InvalidTag as exc:
            raise PayloadDecryptionError(f"a payload encrypted with key {key_id!r} failed authentication") from exc
        decrypted = Payload()
        try:
            decrypted.ParseFromString(plain)
        except Exception as exc:  # authenticated, so written with our key: not expected
            raise PayloadDecryptionError(f"a payload encrypted with key {key_id!r} holds no payload") from exc
        return decrypted


class _RefuseEncrypted(EncodingPayloadConverter):
    """Decodes nothing: an encrypted payload read without keys fails naming the setting, instead of the
    SDK's "Unknown payload encoding"."""

    @property
    def encoding(self) -> str:
        return ENCODING.decode()

    def to_payload(self, value: Any) -> Payload | None:
        return None  # never chosen to encode

    def from_payload(self, payload: Payload, type_hint: type | None = None) -> Any:
        key_id = payload.metadata.get(KEY_ID_METADATA, b"").decode(errors="replace")
        raise PayloadDecryptionError(
            f"a payload is encrypted (with key {key_id!r}), but {ENV_ENCRYPTION_KEYS} is not set: set it to "
            "the keys the control plane uses."
        )


class KeylessPayloadConverter(CompositePayloadConverter):
    """Temporal's default payload converters, and one that refuses encrypted payloads (see above)."""

    def __init__(self) -> None:
        super().__init__(*DefaultPayloadConverter.default_encoding_payload_converters, _RefuseEncrypted())
