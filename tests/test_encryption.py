"""Payload encryption: arguments, results, progress and errors are opaque in Temporal's history, for
invocations and the ones they start, and readable again by whoever holds the keys (rotation included)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from temporalio.api.common.v1 import Payload

from multinode import InvocationStatus, get_deployed_function
from multinode._codec import (
    ENV_ACCEPT_PLAIN,
    ENV_ENCRYPTION_KEYS,
    EncryptionCodec,
    PayloadDecryptionError,
    new_key,
    parse_keys,
)
from multinode._settings import MultinodeSettings
from multinode.control_plane.codec_server import CodecServer
from multinode.control_plane.registration import register_async
from multinode.errors import ConfigurationError, InvocationFailedError, MultinodeError
from tests.conftest import start_dev_server
from tests.helpers import ThreadWorker, assert_eventually, write_tasks
from tests.test_progress import temporal_cli

SECRET = "s3cr3t-" + uuid.uuid4().hex[:8]
"""Goes into arguments; every value derived from it must stay out of the raw history."""

TASKS = """
import os
import time
from multinode import Multinode

# Imported at registration (its import check) and in every container's user process: neither may see a key.
for name in ("MULTINODE_ENCRYPTION_KEYS", "TEMPORAL_API_KEY"):
    if os.environ.get(name):
        raise RuntimeError(name + " is visible to user code")

mn = Multinode()

@mn.function()
def shout(text):
    yield {"progress_of": text + "-progress"}
    time.sleep(2)
    yield text + "-result"  # a generator's result is its last yield

@mn.function()
def nests(text):
    child = shout.start(text + "-child")
    return shout.await_result(child, timeout=120) + "+parent"

@mn.function()
def fails(text):
    raise ValueError(text + "-error")
"""


@pytest.fixture
def keyed(settings: MultinodeSettings, monkeypatch: pytest.MonkeyPatch) -> Iterator[MultinodeSettings]:
    """Settings (and the process environment, for the SDK) with an encryption key, and a worker using it."""
    monkeypatch.setenv(ENV_ENCRYPTION_KEYS, new_key("first"))
    keyed = MultinodeSettings.from_env()
    worker = ThreadWorker(keyed)
    yield keyed
    worker.stop()


def _history(settings: MultinodeSettings, workflow_id: str) -> str:
    return temporal_cli(settings, "workflow", "show", "--workflow-id", workflow_id)


@pytest.mark.usefixtures("no_containers_left")
def test_payloads_are_opaque_in_history_and_readable_with_the_key(
    keyed: MultinodeSettings, project_name: str, tmp_path: Path
) -> None:
    asyncio.run(register_async(write_tasks(tmp_path / "tasks", {"main.py": TASKS}), project_name, keyed))
    nests = get_deployed_function(project_name, "nests")
    shout = get_deployed_function(project_name, "shout")
    fails = get_deployed_function(project_name, "fails")

    running = shout.start(SECRET)

    def progress() -> object:
        got = shout.get(running)
        print(got.status, got.result, [(e.status, e.error) for e in got.executions])
        return got.result

    assert assert_eventually(progress, timeout=60) == {"progress_of": f"{SECRET}-progress"}
    parent = nests.start(SECRET)
    failing = fails.start(SECRET)
    assert shout.await_result(running, timeout=120) == f"{SECRET}-result"
    assert nests.await_result(parent, timeout=180) == f"{SECRET}-child-result+parent"
    with pytest.raises(InvocationFailedError, match=f"{SECRET}-error"):
        fails.await_result(failing, timeout=120)

    shouts = assert_eventually(lambda: len(ids := shout.list().invocation_ids) == 2 and ids, timeout=30)
    ids = [parent, failing, *shouts]  # the child is the other `shout`
    for workflow_id in ids:
        raw = _history(keyed, workflow_id)
        assert "binary/encrypted" in raw or "YmluYXJ5L2VuY3J5cHRlZA" in raw, f"nothing encrypted in {workflow_id}"
        assert SECRET not in raw, f"{workflow_id}'s history shows the secret in plain text"
        encoded_secret = json.dumps(SECRET)  # JSON payloads are base64 in the CLI's output: look there too
        assert not _contains_base64_of(raw, encoded_secret), f"{workflow_id}'s history holds it in a plain payload"
    # Its status, function and project stay readable: search attributes are never encrypted.
    assert shout.get(running).status == InvocationStatus.SUCCEEDED
    # Whoever holds the key reads them through a codec server (as the Web UI does).
    codec = EncryptionCodec(
        parse_keys(keyed.encryption_keys.get_secret_value()), accept_plain=True
    )  # as `mn codec-server`
    with CodecServer(codec) as server:
        decoded = temporal_cli(keyed, "workflow", "show", "--workflow-id", failing, "--codec-endpoint", server.url)
    # Payloads show as JSON (base64 in the CLI's output): the argument, and the error in the result.
    assert _contains_base64_of(decoded, json.dumps(SECRET)) and _contains_base64_of(decoded, f"{SECRET}-error")


def _contains_base64_of(raw: str, text: str) -> bool:
    """Whether any base64 string in the CLI's JSON output decodes to something containing ``text``."""
    import base64
    import re

    for candidate in re.findall(r'"([A-Za-z0-9+/]{16,}={0,2})"', raw):
        try:
            decoded = base64.b64decode(candidate, validate=True)
        except ValueError:
            continue
        if text.strip('"').encode() in decoded:
            return True
    return False


@pytest.mark.usefixtures("no_containers_left")
def test_rotated_keys_still_read_old_payloads_and_a_missing_key_is_named(
    keyed: MultinodeSettings, project_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asyncio.run(register_async(write_tasks(tmp_path / "tasks", {"main.py": TASKS}), project_name, keyed))
    first_key = keyed.encryption_keys.get_secret_value()
    invocation_id = get_deployed_function(project_name, "shout").start("old")
    assert get_deployed_function(project_name, "shout").await_result(invocation_id, timeout=120) == "old-result"

    monkeypatch.setenv(ENV_ENCRYPTION_KEYS, f"{new_key('second')},{first_key}")
    assert get_deployed_function(project_name, "shout").get(invocation_id).result == "old-result"

    monkeypatch.setenv(ENV_ENCRYPTION_KEYS, new_key("second"))
    with pytest.raises(MultinodeError, match="'first'"):
        get_deployed_function(project_name, "shout").get(invocation_id)

    monkeypatch.delenv(ENV_ENCRYPTION_KEYS)
    with pytest.raises(MultinodeError, match=ENV_ENCRYPTION_KEYS):
        get_deployed_function(project_name, "shout").get(invocation_id)


def test_a_malformed_key_is_refused_when_settings_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_ENCRYPTION_KEYS, "first:dG9vIHNob3J0")
    with pytest.raises(ConfigurationError, match="32 bytes"):
        MultinodeSettings.from_env()
    settings = MultinodeSettings.from_env({ENV_ENCRYPTION_KEYS: new_key("k")})
    assert "k:" not in repr(settings) and "k:" not in str(settings)  # the key never shows in a repr


@pytest.mark.usefixtures("no_containers_left")
def test_with_keys_a_plain_payload_is_refused_unless_accepted(
    register, project_name: str, settings: MultinodeSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    register({"main.py": TASKS})  # by a control plane without keys: its history is plain
    invocation_id = get_deployed_function(project_name, "shout").start("plain")
    assert get_deployed_function(project_name, "shout").await_result(invocation_id, timeout=120) == "plain-result"

    monkeypatch.setenv(ENV_ENCRYPTION_KEYS, new_key("later"))
    with pytest.raises(MultinodeError, match=ENV_ACCEPT_PLAIN):
        get_deployed_function(project_name, "shout").get(invocation_id)
    monkeypatch.setenv(ENV_ACCEPT_PLAIN, "1")
    assert get_deployed_function(project_name, "shout").get(invocation_id).result == "plain-result"


def test_damaged_ciphertext_is_refused() -> None:
    codec = EncryptionCodec(parse_keys(new_key("k")))
    sealed = codec.encrypt(Payload(metadata={"encoding": b"json/plain"}, data=b'"x"'))
    assert codec.decrypt(sealed).data == b'"x"'
    for data in (b"", sealed.data[:20], sealed.data[:-1] + bytes([sealed.data[-1] ^ 1])):
        damaged = Payload(metadata=dict(sealed.metadata), data=data)
        with pytest.raises(PayloadDecryptionError):
            codec.decrypt(damaged)


def test_the_dev_server_process_holds_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_ENCRYPTION_KEYS, new_key("k"))
    server = start_dev_server(ui=False)
    try:
        assert server.process is not None
        environ = Path(f"/proc/{server.process.pid}/environ").read_bytes()
        assert ENV_ENCRYPTION_KEYS.encode() not in environ
    finally:
        server.stop()
