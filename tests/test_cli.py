"""The ``mn`` CLI end to end, as a user runs it (real processes, JSON output for scripts)."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from multinode import get_deployed_function
from multinode._client import unreachable_error
from multinode._settings import MultinodeSettings
from multinode.cli import app
from multinode.control_plane.devserver import DevServer
from multinode.errors import ValidationError
from tests.helpers import write_tasks

MN = str(Path(sys.executable).parent / "mn")

TASKS = """
from multinode import Multinode

mn = Multinode()

@mn.function()
def greet(name, punctuation="!"):
    print(f"greeting {name}")
    return f"hello {name}{punctuation}"
"""


def mn(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MN, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=120)


def test_register_invoke_get_list_logs_describe_delete(worker, project_name: str, tmp_path: Path) -> None:
    folder = write_tasks(tmp_path / "tasks", {"main.py": TASKS})
    done = mn("register", str(folder), "--project", project_name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "v1"
    assert project_name in mn("projects", "--json").stdout

    described = json.loads(mn("describe", project_name, "greet", "--json").stdout)
    assert described["function"]["config"]["memory_mib"] == 256

    runner = CliRunner(mix_stderr=False) if "mix_stderr" in CliRunner.__init__.__code__.co_varnames else CliRunner()
    result = runner.invoke(app, ["invoke", "greet", '"Ada"', "--project", project_name, "--follow", "--json"])
    assert result.exit_code == 0, result.output
    invocation = json.loads(result.stdout)
    assert invocation["status"] == "SUCCEEDED" and invocation["result"] == "hello Ada!"
    invocation_id = invocation["invocation_id"]

    got = json.loads(mn("get", invocation_id, "--json").stdout)
    assert got["terminated"] is True and got["executions"][0]["status"] == "SUCCEEDED"
    listed = json.loads(mn("list", "greet", "--project", project_name, "--json").stdout)
    assert [i["invocation_id"] for i in listed["invocations"]] == [invocation_id]
    assert "greeting Ada" in mn("logs", invocation_id).stdout
    assert json.loads(mn("describe", invocation_id, "--json").stdout)["status"] == "SUCCEEDED"
    described = json.loads(mn("describe", project_name, "greet", "--json").stdout)
    assert [i["invocation_id"] for i in described["recent"]] == [invocation_id]
    running = json.loads(mn("list", "greet", "--project", project_name, "--status", "running", "--json").stdout)
    assert running["invocations"] == []
    done = mn("list", "greet", "--project", project_name, "--status", "BOGUS")
    assert done.returncode == 1 and "Unknown status" in done.stderr

    done = mn("delete", project_name, "--yes")
    assert done.returncode == 0, done.stderr
    done = mn("describe", project_name)
    assert done.returncode == 1 and "is not registered" in done.stderr


def strict_json(text: str) -> Any:
    """Parse as JSON proper: Python's json accepts NaN and Infinity, which JSON has not."""

    def refuse(constant: str) -> Any:
        raise AssertionError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


SPECIAL = """
from multinode import Multinode

mn = Multinode()

@mn.function()
def scale(x, factor=1):
    return {"product": x * factor, "nan": float("nan"), "inf": float("inf"), "floats": [-float("inf"), 0.5]}
"""


def test_negative_numbers_are_arguments_and_json_stays_json(worker, project_name: str, tmp_path: Path) -> None:
    folder = write_tasks(tmp_path / "tasks", {"main.py": SPECIAL})
    assert mn("register", str(folder), "--project", project_name).returncode == 0

    done = mn("invoke", "scale", "-5", "--project", project_name, "-2.5", "--follow", "--json")
    assert done.returncode == 0, done.stderr
    invocation = strict_json(done.stdout)
    assert invocation["result"] == {"product": 12.5, "nan": "NaN", "inf": "Infinity", "floats": ["-Infinity", 0.5]}
    got = strict_json(mn("get", invocation["invocation_id"], "--json").stdout)
    assert got["result"]["nan"] == "NaN"
    listed = strict_json(mn("list", "scale", "--project", project_name, "--json").stdout)
    assert listed["invocations"][0]["result"]["inf"] == "Infinity"

    # After `--` as before, and next to short options; a word that is neither a number nor an option is
    # still refused.
    done = mn("invoke", "scale", "--project", project_name, "--follow", "--json", "--", "-3")
    assert strict_json(done.stdout)["result"]["product"] == -3, done.stderr
    done = mn("invoke", "scale", "-1e1", "-fp", project_name, "--json")
    assert strict_json(done.stdout)["result"]["product"] == -10.0, done.stderr
    done = mn("invoke", "scale", "-5", "--project", project_name, "--bogus")
    assert done.returncode == 2 and "No such option: --bogus" in done.stderr, done.stderr


def test_usage_errors_print_usage_and_exit_2() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MULTINODE_PROJECT"}
    for args, usage, message in [
        (["invoke"], "Usage: mn invoke", "Missing argument 'FUNCTION'"),
        (["invoke", "greet"], "Usage: mn invoke", "Missing option '--project'"),
        (["get", "--nope", "inv-1"], "Usage: mn get", "No such option: --nope"),
        (["bogus"], "Usage: mn", "No such command 'bogus'"),
        (["list", "greet", "--project"], "", "Option '--project' requires an argument"),  # typer shows no usage
    ]:
        done = subprocess.run([MN, *args], capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert usage in done.stderr and message.lower() in done.stderr.lower(), done.stderr
        assert "unexpected" not in done.stderr


def test_declining_the_delete_prompt_exits_quietly() -> None:
    done = subprocess.run([MN, "delete", "some-project"], input="n\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert "error" not in done.stderr.lower() and "unexpected" not in done.stderr
    assert "Aborted" in done.stderr


def test_an_empty_invocation_id_is_refused_clearly(settings: MultinodeSettings) -> None:
    for args in (["get", ""], ["cancel", ""], ["logs", " "]):
        done = mn(*args)
        assert done.returncode == 1, (args, done.stderr)
        assert "The invocation id is empty" in done.stderr and "inv-<32 hex digits>" in done.stderr, done.stderr
    fn = get_deployed_function("any-project", "any_function", settings=settings)
    with pytest.raises(ValidationError, match="invocation id is empty"):
        fn.get("")


def listener(*, answer: bytes | None) -> tuple[socket.socket, int]:
    """A TCP server on a free port: it sends ``answer`` and keeps the connection until the client closes
    it (as an HTTP server would), or without an answer closes each connection at once."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return  # closed
            with conn:
                if answer is not None:
                    conn.recv(1024)
                    conn.sendall(answer)
                    conn.settimeout(10)
                    with contextlib.suppress(OSError):
                        while conn.recv(1024):
                            pass

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1]


def test_temporal_address_at_something_else_says_so(
    settings: MultinodeSettings, dev_server: DevServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    http = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    http_server, http_port = listener(answer=http)
    garbage_server, garbage_port = listener(answer=b"SSH-2.0-OpenSSH_9.6\r\n")  # neither HTTP nor gRPC
    closing_server, closing_port = listener(answer=None)
    try:
        for port, cause in [
            (dev_server.ui_port, "an HTTP server answered, not a Temporal frontend"),  # the mistake of issue 9
            (http_port, "an HTTP server answered, not a Temporal frontend"),
            (garbage_port, "not as a Temporal frontend: it does not speak gRPC"),
            (closing_port, "closed the connection without answering"),
        ]:
            monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{port}")
            done = mn("projects")
            assert done.returncode == 1, done.stderr
            assert cause in done.stderr and "gRPC port (usually 7233)" in done.stderr, done.stderr
            assert "mn dev" not in done.stderr
    finally:
        for server in (http_server, garbage_server, closing_server):
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close alone would not
            server.close()
    monkeypatch.setenv("TEMPORAL_ADDRESS", f"127.0.0.1:{closing_port}")  # closed: refused now
    done = mn("projects")
    assert "connection refused" in done.stderr and "Start the local stack with `mn dev`" in done.stderr


def test_mn_dev_is_advised_only_for_a_local_address() -> None:
    for address, local in [("localhost:7233", True), ("127.0.0.1:1", True), ("[::1]:7233", True)] + [
        ("temporal.example.com:7233", False),
        ("10.1.2.3:7233", False),
    ]:
        error = unreachable_error(MultinodeSettings(temporal_profile={"address": address}), "connection refused")
        assert ("mn dev" in str(error)) is local, str(error)
        assert error.address == address and error.cause == "connection refused"
