"""Multinode against a Temporal reachable only over TLS / mTLS, configured only by Temporal's conventions.

The dev server has no TLS option, so each test puts a TLS-terminating proxy (tests/tls_proxy.py) in front
of its plaintext port and points every Multinode process (the SDK, the control-plane worker, the CLI and
the containers, which only get MULTINODE_TEMPORAL_PROFILE_JSON) at the proxy through TEMPORAL_* variables
or a temporal.toml profile. The containers never see the dev server's plaintext address.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from multinode import InvocationStatus, get_deployed_function
from multinode._client import CONNECT_TIMEOUT_SECONDS, connect
from multinode._settings import MultinodeSettings
from multinode.control_plane.devserver import DevServer
from multinode.errors import TemporalUnreachableError
from tests.helpers import assert_eventually, write_tasks
from tests.tls_proxy import CLIENT_NAME, SERVER_NAME, TestPKI, TLSProxy
from tests.tls_stack import mtls_env, set_env

MN = str(Path(sys.executable).parent / "mn")
REFUSAL_SECONDS = 5.0
"""A refused TLS connection must fail this fast (well under the SDK's connect timeout)."""

TASKS = """
import json
import os

from multinode import Multinode

mn = Multinode()

@mn.function()
def add_one(x):
    return x + 1

@mn.function()
def report(x):
    # Runs in a container; starting add_one makes the container's SDK connect too.
    child_id = add_one.start(x)
    return {
        "child": add_one.await_result(child_id, timeout=60),
        "profile": json.loads(os.environ["MULTINODE_TEMPORAL_PROFILE_JSON"]),
        "temporal_env": sorted(k for k in os.environ if k.startswith("TEMPORAL_")),
    }
"""


def mn(*args: str) -> str:
    """Run the ``mn`` CLI in a process of its own with this environment; return what it printed."""
    done = subprocess.run([MN, *args], capture_output=True, text=True, timeout=60, env=dict(os.environ))
    assert done.returncode == 0, f"mn {' '.join(args)}: {done.returncode}\n{done.stderr}"
    return done.stdout


def assert_refused(settings: MultinodeSettings, *, project: str = "any-project") -> TemporalUnreachableError:
    """Both a raw connect and the SDK's ``.start`` fail fast with TemporalUnreachableError."""
    began = time.monotonic()
    with pytest.raises(TemporalUnreachableError) as raised:
        asyncio.run(connect(settings))
    elapsed = time.monotonic() - began
    assert elapsed < REFUSAL_SECONDS < CONNECT_TIMEOUT_SECONDS, f"connect was refused after {elapsed:.1f} s"
    began = time.monotonic()
    with pytest.raises(TemporalUnreachableError) as raised_by_sdk:
        get_deployed_function(project, "report", settings=settings).start(1)
    elapsed = time.monotonic() - began
    assert elapsed < REFUSAL_SECONDS, f".start was refused after {elapsed:.1f} s"
    for error in (raised.value, raised_by_sdk.value):
        assert error.address == settings.temporal_address
        assert "no answer within" not in str(error)  # refused, not timed out
        assert str(error).startswith(f"Cannot reach Temporal at {settings.temporal_address}")
    return raised.value


def assert_proxy_refused(proxy: TLSProxy, reason: str) -> None:
    assert_eventually(
        lambda: any(reason in failure for failure in proxy.failures),
        timeout=30,
        message=f"the proxy refused a handshake with {reason}: {proxy.failures}",
    )


@pytest.mark.timeout(180)
def test_mtls_from_environment_variables_end_to_end(
    stack, proxies, pki: TestPKI, dev_server: DevServer, project_name: str, tmp_path: Path
) -> None:
    proxy = proxies(require_client_cert=True)
    secure = stack(mtls_env(proxy, pki))
    tls = secure.settings.temporal_profile["tls"]
    assert secure.settings.temporal_address == proxy.address
    assert tls == {
        "server_name": SERVER_NAME,
        "server_ca_cert": {"path": str(pki.ca_cert)},
        "client_cert": {"path": str(pki.client_cert)},
        "client_key": {"path": str(pki.client_key)},
    }

    record = secure.register(write_tasks(tmp_path / "tasks", {"main.py": TASKS}), project_name)
    assert record.version_id == "v1"
    fn = get_deployed_function(project_name, "report", settings=secure.settings)
    invocation_id = fn.start(41)
    result = fn.await_result(invocation_id, timeout=90)

    # The container's agent (and, through it, the nested call) connected through the proxy with the
    # forwarded profile only; the user code saw the address and namespace, never the TLS settings.
    assert result["child"] == 42
    assert result["profile"] == {"address": proxy.address, "namespace": "default"}
    assert proxy.address != dev_server.address
    assert result["temporal_env"] == []
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.SUCCEEDED and invocation.terminated
    # SDK (register, portal), worker, two containers' agents: every one presented the client certificate
    # and asked for temporal.test, over HTTP/2.
    assert len(proxy.handshakes) >= 5, proxy.handshakes
    assert {(h.sni, h.client_common_name, h.alpn) for h in proxy.handshakes} == {(SERVER_NAME, CLIENT_NAME, "h2")}

    # Without a client certificate, or with one from another CA, the proxy refuses the connection.
    without_cert = MultinodeSettings.from_env(
        {
            k: v
            for k, v in os.environ.items()
            if k not in ("TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH")
        }
    )
    assert "client_cert" not in without_cert.temporal_profile["tls"]
    assert_refused(without_cert, project=project_name)
    assert_proxy_refused(proxy, "PEER_DID_NOT_RETURN_A_CERTIFICATE")

    rogue = MultinodeSettings.from_env(
        {
            **os.environ,
            "TEMPORAL_TLS_CLIENT_CERT_PATH": str(pki.rogue_client_cert),
            "TEMPORAL_TLS_CLIENT_KEY_PATH": str(pki.rogue_client_key),
        }
    )
    assert_refused(rogue, project=project_name)
    assert_proxy_refused(proxy, "CERTIFICATE_VERIFY_FAILED")

    # The client verifies the server against TEMPORAL_TLS_SERVER_NAME.
    wrong_name = MultinodeSettings.from_env({**os.environ, "TEMPORAL_TLS_SERVER_NAME": "elsewhere.test"})
    refused = assert_refused(wrong_name, project=project_name)
    assert "does not match its name (set TEMPORAL_TLS_SERVER_NAME)" in str(refused)
    assert "elsewhere.test" in str(refused.__cause__)


@pytest.mark.timeout(180)
def test_temporal_toml_profile_end_to_end_and_cli(
    stack, proxies, pki: TestPKI, project_name: str, tmp_path: Path
) -> None:
    proxy = proxies(require_client_cert=True)
    config = tmp_path / "temporal.toml"
    config.write_text(
        f"""
        # The default profile points nowhere: only the named one reaches Temporal.
        [profile.default]
        address = "127.0.0.1:1"

        [profile.secure]
        address = "{proxy.address}"
        namespace = "default"

        [profile.secure.tls]
        server_ca_cert_path = "{pki.ca_cert}"
        client_cert_path = "{pki.client_cert}"
        client_key_path = "{pki.client_key}"
        server_name = "{SERVER_NAME}"
        """.replace("\n        ", "\n")
    )
    secure = stack(
        {
            "TEMPORAL_CONFIG_FILE": str(config),
            "TEMPORAL_PROFILE": "secure",
            "TEMPORAL_ADDRESS": None,
            "TEMPORAL_NAMESPACE": None,
        }
    )
    assert not any(key in os.environ for key in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE"))
    assert secure.settings.temporal_address == proxy.address
    assert secure.settings.temporal_profile["tls"]["client_key"] == {"path": str(pki.client_key)}

    secure.register(write_tasks(tmp_path / "tasks", {"main.py": TASKS}), project_name)
    fn = get_deployed_function(project_name, "report", settings=secure.settings)
    invocation_id = fn.start(1)
    assert fn.await_result(invocation_id, timeout=90)["child"] == 2
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.SUCCEEDED and invocation.terminated

    # The CLI, a separate process with only the config file and the profile name, reaches it too.
    before = len(proxy.handshakes)
    assert project_name in json.loads(mn("projects", "--json"))
    assert json.loads(mn("get", invocation_id, "--json"))["status"] == "SUCCEEDED"
    assert len(proxy.handshakes) > before

    # The same profile without its TLS table is a plaintext client, which the proxy refuses.
    config.write_text(config.read_text().split("[profile.secure.tls]")[0])
    assert_refused(MultinodeSettings.from_env(), project=project_name)


@pytest.mark.timeout(120)
def test_tls_without_client_certificate_checked_against_dialled_host(
    stack, proxies, pki: TestPKI, project_name: str, tmp_path: Path
) -> None:
    """TLS without client certificates; the certificate is checked against the dialled host name."""
    proxy = proxies()
    secure = stack(
        {
            "TEMPORAL_ADDRESS": f"localhost:{proxy.port}",
            "TEMPORAL_TLS": "true",
            "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca_cert),
        }
    )
    secure.register(write_tasks(tmp_path / "tasks", {"main.py": TASKS}), project_name)
    assert get_deployed_function(project_name, "add_one", settings=secure.settings).call_remote(1) == 2
    assert {(h.sni, h.client_common_name) for h in proxy.handshakes} == {("localhost", None)}


@pytest.mark.timeout(60)
def test_plaintext_client_against_tls_is_refused_quickly(
    settings: MultinodeSettings, proxies, pki: TestPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = proxies(require_client_cert=True)
    set_env(monkeypatch, {"TEMPORAL_ADDRESS": proxy.address})
    plaintext = MultinodeSettings.from_env()
    assert "tls" not in plaintext.temporal_profile
    assert_refused(plaintext)
    assert_proxy_refused(proxy, "WRONG_VERSION_NUMBER")  # it spoke HTTP/2 in clear to a TLS port

    # TLS without trusting the test CA is refused by the client itself.
    set_env(monkeypatch, {"TEMPORAL_TLS": "true"})
    untrusted = MultinodeSettings.from_env()
    assert untrusted.temporal_profile["tls"] == {"disabled": False}
    assert_refused(untrusted)

    # TEMPORAL_TLS=false on a TLS-looking profile still means plaintext.
    set_env(monkeypatch, {"TEMPORAL_TLS": "false", "TEMPORAL_TLS_SERVER_CA_CERT_PATH": str(pki.ca_cert)})
    assert_refused(MultinodeSettings.from_env())


@pytest.mark.timeout(120)
def test_relative_certificate_paths_reach_the_container(
    stack, proxies, pki: TestPKI, project_name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy = proxies(require_client_cert=True)
    monkeypatch.chdir(pki.directory)
    env = mtls_env(proxy, pki)
    for key in ("TEMPORAL_TLS_SERVER_CA_CERT_PATH", "TEMPORAL_TLS_CLIENT_CERT_PATH", "TEMPORAL_TLS_CLIENT_KEY_PATH"):
        env[key] = Path(str(env[key])).name
    secure = stack(env)  # the worker, in this directory, connects
    secure.register(write_tasks(tmp_path / f"tasks-{uuid.uuid4().hex[:6]}", {"main.py": TASKS}), project_name)
    fn = get_deployed_function(project_name, "add_one", settings=secure.settings)
    assert fn.call_remote(1) == 2  # the container, in its own folder, still finds the certificates
