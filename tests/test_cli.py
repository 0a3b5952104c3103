"""The ``mn`` CLI end to end, as a user runs it (real processes, JSON output for scripts)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from multinode.cli import app
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
