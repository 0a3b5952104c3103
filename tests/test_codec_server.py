"""The remote codec server (real HTTP over loopback), key parsing, and `mn encryption-key` / `mn codec-server`."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from email.message import Message
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import json_format
from temporalio.api.common.v1 import Payload

from multinode._codec import ENCODING, ENV_ENCRYPTION_KEYS, KEY_ID_METADATA, EncryptionCodec, new_key, parse_keys
from multinode.control_plane.codec_server import CodecServer
from multinode.errors import ConfigurationError
from tests.conftest import free_port

MN = str(Path(sys.executable).parent / "mn")
UI_ORIGIN = "http://localhost:8233"

pytestmark = pytest.mark.timeout(60)


def codec(*keys: str) -> EncryptionCodec:
    """As `mn codec-server` builds it: plain payloads are shown as they are."""
    return EncryptionCodec(parse_keys(",".join(keys)), accept_plain=True)


def payloads() -> list[Payload]:
    return [
        Payload(metadata={"encoding": b"json/plain"}, data=b'{"name": "Ada", "n": 1}'),
        Payload(metadata={"encoding": b"binary/null"}),
        Payload(metadata={"encoding": b"binary/plain", "extra": b"\x00\xff"}, data=bytes(range(256))),
    ]


def as_json(items: list[Payload]) -> dict[str, Any]:
    return {"payloads": [json_format.MessageToDict(p) for p in items]}


def from_json(document: dict[str, Any]) -> list[Payload]:
    return [json_format.ParseDict(p, Payload()) for p in document["payloads"]]


def post(
    url: str, body: bytes | dict[str, Any], headers: dict[str, str] | None = None, method: str = "POST"
) -> tuple[int, Message, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data if method == "POST" else None, method=method, headers=headers or {})
    request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            status, headers_, raw = response.status, response.headers, response.read()
    except urllib.error.HTTPError as exc:
        status, headers_, raw = exc.code, exc.headers, exc.read()
    return status, headers_, (json.loads(raw) if raw else None)


@pytest.fixture
def key() -> str:
    return new_key("current")


@pytest.fixture
def server(key: str) -> Iterator[CodecServer]:
    with CodecServer(codec(key)) as running:
        yield running


def test_encode_then_decode_through_the_server_gives_back_the_payloads(server: CodecServer, key: str) -> None:
    status, _, encoded = post(f"{server.url}/encode", as_json(payloads()))
    assert status == 200, encoded
    sealed = from_json(encoded)
    assert len(sealed) == 3
    for payload in sealed:
        assert payload.metadata["encoding"] == ENCODING
        assert payload.metadata[KEY_ID_METADATA] == b"current"
        assert b"Ada" not in payload.data
    # The UI calls <endpoint>/decode, where the endpoint may have a path, and sends the namespace.
    status, _, decoded = post(f"{server.url}/api/v1/default/decode", encoded, {"X-Namespace": "default"})
    assert status == 200, decoded
    assert from_json(decoded) == payloads()
    assert from_json(decoded) == [codec(key).decrypt(p) for p in sealed]  # what the workers would read


def test_a_rotated_key_still_decrypts_and_the_new_one_encrypts() -> None:
    old, new = new_key("old"), new_key("new")
    sealed_by_old = [codec(old).encrypt(p) for p in payloads()]
    with CodecServer(codec(new, old)) as server:
        status, _, decoded = post(f"{server.url}/decode", as_json(sealed_by_old))
        assert status == 200, decoded
        assert from_json(decoded) == payloads()
        status, _, encoded = post(f"{server.url}/encode", as_json(payloads()[:1]))
        assert status == 200, encoded
        assert from_json(encoded)[0].metadata[KEY_ID_METADATA] == b"new"


def test_a_payload_of_an_unknown_key_is_a_400_naming_the_key(server: CodecServer) -> None:
    foreign = codec(new_key("retired-2023")).encrypt(payloads()[0])
    status, headers, answer = post(f"{server.url}/decode", as_json([foreign]))
    assert status == 400
    assert headers["Content-Type"] == "application/json"
    assert "'retired-2023'" in answer["error"] and ENV_ENCRYPTION_KEYS in answer["error"]


def test_a_tampered_payload_is_a_400(server: CodecServer, key: str) -> None:
    sealed = codec(key).encrypt(payloads()[0])
    sealed.data = sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])
    status, _, answer = post(f"{server.url}/decode", as_json([sealed]))
    assert status == 400 and "failed authentication" in answer["error"]


def test_unencrypted_payloads_pass_through_decode_unchanged(server: CodecServer) -> None:
    status, _, decoded = post(f"{server.url}/decode", as_json(payloads()))
    assert status == 200, decoded
    assert decoded == as_json(payloads())


def test_cors_preflight_answers_only_the_web_ui_origin(server: CodecServer) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type,x-namespace"}
    status, headers, _ = post(f"{server.url}/decode", b"", {"Origin": UI_ORIGIN, **preflight}, method="OPTIONS")
    assert status in (200, 204)
    assert headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    assert headers["Access-Control-Allow-Methods"] == "POST, OPTIONS"
    assert headers["Access-Control-Allow-Headers"] == "Content-Type, X-Namespace, Authorization"
    assert headers["Access-Control-Allow-Credentials"] == "true"

    evil = "http://evil.example:8233"
    status, headers, _ = post(f"{server.url}/decode", b"", {"Origin": evil, **preflight}, method="OPTIONS")
    assert "Access-Control-Allow-Origin" not in headers
    assert "Access-Control-Allow-Credentials" not in headers

    status, headers, answer = post(f"{server.url}/decode", as_json(payloads()), {"Origin": UI_ORIGIN})
    assert status == 200 and headers["Access-Control-Allow-Origin"] == UI_ORIGIN
    status, headers, answer = post(f"{server.url}/decode", as_json(payloads()), {"Origin": evil})
    assert status == 403 and "--web-origin" in answer["error"]
    assert "Access-Control-Allow-Origin" not in headers


def test_configured_origins_replace_the_default(key: str) -> None:
    with CodecServer(codec(key), origins=["https://temporal.example.com/"]) as server:
        ok, other = {"Origin": "https://temporal.example.com"}, {"Origin": UI_ORIGIN}
        _, headers, _ = post(f"{server.url}/decode", b"", ok, method="OPTIONS")
        assert headers["Access-Control-Allow-Origin"] == "https://temporal.example.com"
        _, headers, _ = post(f"{server.url}/decode", b"", other, method="OPTIONS")
        assert "Access-Control-Allow-Origin" not in headers
    with pytest.raises(ConfigurationError, match="not an origin"):
        CodecServer(codec(key), origins=["localhost:8233"])


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"\xff\xfe",
        b"[]",
        b'{"payloads": {"data": "MQ=="}}',
        b'{"payloads": [{"data": "not base64!"}]}',
        b'{"payloads": [{"metadata": {"encoding": 5}}]}',
        b'{"payloads": [{"unknown": 1}]}',
    ],
)
def test_a_bad_body_is_a_400(server: CodecServer, body: bytes) -> None:
    for operation in ("encode", "decode"):
        status, _, answer = post(f"{server.url}/{operation}", body)
        assert status == 400, answer
        assert answer["error"].startswith("bad request")


def test_an_unknown_path_is_a_404(server: CodecServer) -> None:
    for path in ("/", "/decoder", "/encode/more", "/payloads"):
        status, _, answer = post(f"{server.url}{path}", as_json(payloads()))
        assert status == 404, path
        assert "encode" in answer["error"]


def test_a_body_over_the_limit_is_a_413(key: str) -> None:
    with CodecServer(codec(key), max_body_bytes=1000) as server:
        status, _, _ = post(f"{server.url}/decode", as_json(payloads()[:1]))
        assert status == 200
        # A declared length over the limit is refused before the body is read.
        connection = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=10)
        connection.putrequest("POST", "/decode")
        connection.putheader("Content-Length", "1001")
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 413
        assert "limit" in json.loads(response.read())["error"]
        connection.close()


def test_the_server_stops(key: str) -> None:
    server = CodecServer(codec(key))
    with pytest.raises(RuntimeError):
        server.url  # noqa: B018 - not started
    with server:
        url = server.url
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0")
        assert post(f"{url}/decode", as_json([]))[0] == 200
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(urllib.request.Request(f"{url}/decode", data=b"{}"), timeout=5)
    server.stop()  # again: nothing to do


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("k1:" + "QUJD", "is 3 bytes"),
        ("k1:not*base64", "not valid base64"),
        ("bad id:" + new_key().partition(":")[2], "not KEY_ID:BASE64_KEY"),
        ("no-colon", "not KEY_ID:BASE64_KEY"),
        (f"{new_key('same')},{new_key('same')}", "listed twice"),
    ],
)
def test_parse_keys_rejects_malformed_keys(text: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message) as caught:
        parse_keys(text)
    assert caught.value.parameter == ENV_ENCRYPTION_KEYS


def test_parse_keys_reads_a_list_first_key_first() -> None:
    keys = parse_keys(f" {new_key('b')} , {new_key('a')},")
    assert [k.key_id for k in keys] == ["b", "a"]
    assert parse_keys("") == ()


def mn(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MN, *args], capture_output=True, text=True, env=env or cli_env(), timeout=60)


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_ENCRYPTION_KEYS}
    return {**env, **extra}


def test_mn_encryption_key_prints_a_key_that_parses() -> None:
    done = mn("encryption-key", "--id", "prod-2025")
    assert done.returncode == 0, done.stderr
    (parsed,) = parse_keys(done.stdout.strip())
    assert parsed.key_id == "prod-2025" and len(parsed.secret) == 32
    assert ENV_ENCRYPTION_KEYS in done.stderr and len(done.stderr.strip().splitlines()) == 1

    done = mn("encryption-key", "--json")
    assert done.returncode == 0, done.stderr
    (parsed,) = parse_keys(json.loads(done.stdout)["key"])
    assert parsed.secret != parse_keys(mn("encryption-key").stdout.strip())[0].secret

    done = mn("encryption-key", "--id", "bad id")
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.startswith("error: key id 'bad id'") and len(done.stderr.splitlines()) == 1


def test_mn_codec_server_without_keys_fails_in_one_line() -> None:
    done = mn("codec-server", "--port", str(free_port()))
    assert done.returncode == 1
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"error: Set {ENV_ENCRYPTION_KEYS}") and "mn encryption-key" in line

    done = mn("codec-server", env=cli_env(**{ENV_ENCRYPTION_KEYS: "k1:QUJD"}))
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert "is 3 bytes" in line


def test_mn_codec_server_serves_until_sigterm() -> None:
    key = new_key("served")
    port = free_port()
    process = subprocess.Popen(
        [MN, "codec-server", "--port", str(port), "--web-origin", "http://localhost:9999"],
        env=cli_env(**{ENV_ENCRYPTION_KEYS: key}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        sealed = as_json([codec(key).encrypt(p) for p in payloads()])
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()
            try:
                status, headers, decoded = post(f"{url}/decode", sealed, {"Origin": "http://localhost:9999"})
                break
            except urllib.error.URLError:
                assert time.monotonic() < deadline, "the codec server never answered"
                time.sleep(0.05)
        assert status == 200, decoded
        assert from_json(decoded) == payloads()
        assert headers["Access-Control-Allow-Origin"] == "http://localhost:9999"
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, err
    assert f"--ui-codec-endpoint {url}" in out and f"--codec-endpoint {url}" in out
    assert key.partition(":")[2] not in out + err  # the secret is never printed
    assert out.rstrip().endswith("Stopped.")
