"""Malformed input across the SDK, the CLI and registration, one table: each case gets a clear error (a
``MultinodeError`` naming the problem; from the CLI one line and exit code 1 or 2, never a traceback)
and leaves the system as it was (no project, version, stored code, environment or container more)."""

from __future__ import annotations

import asyncio
import io
import itertools
import os
import re
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from multinode import Multinode, get_deployed_function
from multinode._client import connect
from multinode._registry import list_projects, read_project
from multinode._settings import MultinodeSettings
from multinode.control_plane.registration import register_async
from multinode.errors import MultinodeError, NotFoundError
from multinode.provisioner.local import LocalProvisioner
from tests.helpers import write_tasks

MN = str(Path(sys.executable).parent / "mn")

GOOD = """
from multinode import Multinode

mn = Multinode()

@mn.function()
def echo(value, times=1):
    return value * times
"""

DECORATED = """
from multinode import Multinode

mn = Multinode()

{body}
"""


@dataclass
class Case:
    name: str
    run: Callable[[Any], object]
    """Given the test's context, do the malformed thing; raise, or return a finished ``mn`` process."""
    fragment: str
    """What the error must say (case-insensitive)."""


@dataclass
class Context:
    settings: MultinodeSettings
    project: str
    tmp: Path
    register: Callable[..., object]

    def fn(self, function: str = "echo", project: str | None = None, version: str | None = None) -> Any:
        return get_deployed_function(project or self.project, function, version, settings=self.settings)

    def folder(self, files: dict[str, str]) -> Path:
        return write_tasks(self.tmp / f"tasks-{next(_folders)}", files)

    def register_files(self, files: dict[str, str], project: str | None = None) -> object:
        return asyncio.run(register_async(self.folder(files), project or f"{self.project}-new", self.settings))

    def mn(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([MN, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=120)


_folders = itertools.count()


def decorate(**options: object) -> Callable[[Any], object]:
    def run(_: Context) -> object:
        @Multinode().function(**options)  # type: ignore[arg-type]
        def f() -> int:
            return 1

        return f

    return run


def decorate_object(make: Callable[[], object]) -> Callable[[Any], object]:
    return lambda _: Multinode().function()(make())  # type: ignore[arg-type]


def _generator() -> object:
    yield 1


class _Job:
    def __init__(self) -> None:
        self.lock = threading.Lock()


class _Holder:
    def method(self) -> int:
        return 1


def _nested() -> object:
    def inner() -> int:
        return 1

    return inner


def _long_named() -> int:
    return 1


def _long_named_function() -> object:
    return types.FunctionType(_long_named.__code__.replace(co_name=LONG, co_qualname=LONG), {})


async def _coroutine_function() -> int:
    return 1


def _start_with(make: Callable[[], object]) -> Callable[[Context], object]:
    def run(ctx: Context) -> object:
        value = make()
        try:
            return ctx.fn().start(value)
        finally:
            if isinstance(value, (io.IOBase, socket.socket)):
                value.close()

    return run


def _symlink_outside(ctx: Context) -> object:
    outside = ctx.tmp / f"outside-{next(_folders)}"
    outside.mkdir()
    (outside / "secret").write_text("not yours")
    folder = ctx.folder({"main.py": GOOD})
    (folder / "data").symlink_to(outside)
    return asyncio.run(register_async(folder, f"{ctx.project}-link", ctx.settings))


def _symlink_loop(ctx: Context) -> object:
    folder = ctx.folder({"main.py": GOOD})
    (folder / "loop").symlink_to(folder)
    return asyncio.run(register_async(folder, f"{ctx.project}-loop", ctx.settings))


LONG = "f" * 230

CASES = [
    # --- the decorator --------------------------------------------------------------------------
    Case("cpu negative", decorate(cpu=-1), "cpu"),
    Case("cpu too high", decorate(cpu=17), "cpu"),
    Case("cpu of the wrong type", decorate(cpu="lots"), "cpu"),
    Case("memory unparseable", decorate(memory="lots"), "memory"),
    Case("memory too high", decorate(memory="65 GiB"), "memory"),
    Case("timeout zero", decorate(timeout=timedelta(0)), "timeout"),
    Case("timeout over 24 h", decorate(timeout=timedelta(hours=25)), "timeout"),
    Case("max_concurrency zero", decorate(max_concurrency=0), "max_concurrency"),
    Case("max_concurrency over 100", decorate(max_concurrency=101), "max_concurrency"),
    Case("max_retries negative", decorate(max_retries=-1), "max_retries"),
    Case("max_retries over 50", decorate(max_retries=51), "max_retries"),
    Case("unknown option", decorate(gpus=1), "gpus"),
    Case("a misspelt option", decorate(max_retry=1), "did you mean max_retries"),
    Case("a lambda", decorate_object(lambda: lambda: 1), "lambda"),
    Case("a method", decorate_object(lambda: _Holder.method), "method"),
    Case("a nested function", decorate_object(_nested), "top level"),
    Case("an async function", decorate_object(lambda: _coroutine_function), "async"),
    Case("a name too long", decorate_object(_long_named_function), "200"),
    # --- the SDK ------------------------------------------------------------------------------------
    Case("project name with a quote", lambda ctx: ctx.fn(project="good' OR 'x"), "project name"),
    Case("project name too long", lambda ctx: ctx.fn(project="p" * 300), "100"),
    Case("unknown project", lambda ctx: ctx.fn(project=f"{ctx.project}-nope").start(1), "not registered"),
    Case("unknown function", lambda ctx: ctx.fn("nope").start(1), "nope"),
    Case("unknown version", lambda ctx: ctx.fn(version="v99").start(1), "v99"),
    Case("function name with a quote", lambda ctx: ctx.fn("echo' OR 'x"), "function name"),
    Case("a missing argument", lambda ctx: ctx.fn().start(), "value"),
    Case("an unexpected keyword", lambda ctx: ctx.fn().start(1, colour="red"), "colour"),
    Case("too many arguments", lambda ctx: ctx.fn().start(1, 2, 3), "argument"),
    Case("an argument too large", lambda ctx: ctx.fn().start("x" * 300_000), "250,000"),
    Case("a lock argument", _start_with(threading.Lock), "lock"),
    Case("a generator argument", _start_with(_generator), "generator"),
    Case("an open file argument", _start_with(lambda: open(os.devnull)), "file"),  # noqa: SIM115 - closed by _start_with
    Case("a socket argument", _start_with(socket.socket), "socket"),
    Case("a stream argument", _start_with(io.BytesIO), "BytesIO"),
    Case("a module argument", _start_with(lambda: os), "module"),
    Case("an object holding a lock", _start_with(_Job), "lock"),
    Case("get of a malformed id", lambda ctx: ctx.fn().get("not an id"), "no invocation"),
    Case("get of an unknown id", lambda ctx: ctx.fn().get("inv-" + "0" * 32), "inv-" + "0" * 32),
    Case("cancel of an unknown id", lambda ctx: ctx.fn().cancel("inv-" + "1" * 32), "inv-" + "1" * 32),
    Case("await of a malformed id", lambda ctx: ctx.fn().await_result("x'y"), "no invocation"),
    Case("list with a malformed offset", lambda ctx: ctx.fn().list(offset="garbage"), "offset"),
    # --- the CLI ------------------------------------------------------------------------------------
    Case("mn list injection", lambda ctx: ctx.mn("list", "add' OR MultinodeProject = 'c", "-p", ctx.project), "name"),
    Case("mn list lone quote", lambda ctx: ctx.mn("list", "'", "-p", ctx.project), "name"),
    Case("mn list bad status", lambda ctx: ctx.mn("list", "echo", "-p", ctx.project, "--status", "DONE"), "status"),
    Case("mn get malformed id", lambda ctx: ctx.mn("get", "not-an-id"), "no invocation"),
    Case("mn cancel unknown id", lambda ctx: ctx.mn("cancel", "inv-" + "2" * 32), "inv-" + "2" * 32),
    Case("mn logs unknown id", lambda ctx: ctx.mn("logs", "inv-" + "3" * 32), "inv-" + "3" * 32),
    Case("mn invoke unknown function", lambda ctx: ctx.mn("invoke", "nope", "-p", ctx.project), "nope"),
    Case("mn describe unknown project", lambda ctx: ctx.mn("describe", f"{ctx.project}-nope"), "not registered"),
    Case("mn delete unknown project", lambda ctx: ctx.mn("delete", f"{ctx.project}-nope", "--yes"), "not registered"),
    Case("mn register missing folder", lambda ctx: ctx.mn("register", str(ctx.tmp / "nope"), "-p", "x"), "exist"),
    Case(
        "mn register bad project name",
        lambda ctx: ctx.mn("register", str(ctx.folder({"main.py": GOOD})), "-p", "bad name!"),
        "project name",
    ),
    Case("mn unknown option", lambda ctx: ctx.mn("get", "--bogus"), "no such option"),
    # --- registration ------------------------------------------------------------------------------
    Case("no main.py", lambda ctx: ctx.register_files({"other.py": "x = 1"}), "main.py"),
    Case("a syntax error", lambda ctx: ctx.register_files({"main.py": "def broken(:\n"}), "SyntaxError"),
    Case("an import error", lambda ctx: ctx.register_files({"main.py": "import nowhere_to_be_found\n"}), "nowhere"),
    Case("main.py raising", lambda ctx: ctx.register_files({"main.py": "raise RuntimeError('at import')\n"}), "import"),
    Case(
        "no function declared",
        lambda ctx: ctx.register_files({"main.py": "from multinode import Multinode\nmn = Multinode()\n"}),
        "declares no function",
    ),
    Case("a symlink outside", _symlink_outside, "outside the tasks folder"),
    Case("a symlink loop", _symlink_loop, "loop"),
    Case(
        "a helper started at import",
        lambda ctx: ctx.register_files({"main.py": "import subprocess\nsubprocess.Popen(['sleep', '300'])\n" + GOOD}),
        "at import (pid",
    ),
    Case("a malformed .env", lambda ctx: ctx.register_files({"main.py": GOOD, ".env": "FOO BAR\n"}), ".env"),
    Case(
        "a lambda in main.py",
        lambda ctx: ctx.register_files({"main.py": DECORATED.format(body="f = mn.function()(lambda: 1)")}),
        "lambda",
    ),
    Case(
        "names too long together",
        lambda ctx: ctx.register_files(
            {"main.py": DECORATED.format(body=f"@mn.function()\ndef {'g' * 199}():\n    return 1")},
            project="p" * 60,
        ),
        "rename",
    ),
    Case("a bad project name", lambda ctx: ctx.register_files({"main.py": GOOD}, project="no spaces"), "project name"),
]


def _snapshot(settings: MultinodeSettings, project: str) -> dict[str, object]:
    home = settings.home

    async def registry() -> tuple[list[str], list[str]]:
        client = await connect(settings)
        versions = (await read_project(client, project)).versions
        return sorted(await list_projects(client)), sorted(v.version_id for v in versions)

    projects, versions = asyncio.run(registry())
    stored = sorted(
        str(path.relative_to(home))
        for folder in ("code", "envs")
        if (home / folder).is_dir()
        for path in (home / folder).iterdir()
        if not path.name.endswith(".lock")
    )
    return {
        "projects": projects,
        "versions": versions,
        "stored": stored,
        "containers": LocalProvisioner(home).running_handles(),
    }


def _project_exists(settings: MultinodeSettings, name: str) -> bool:
    async def read() -> bool:
        try:
            await read_project(await connect(settings), name)
        except NotFoundError:
            return False
        return True

    return asyncio.run(read())


def _error_of(case: Case, ctx: Context) -> str:
    """The error ``case`` gave, checked for form; AssertionError if it gave none or a bad one."""
    try:
        outcome = case.run(ctx)
    except MultinodeError as exc:
        return str(exc)
    except Exception as exc:  # noqa: BLE001 - anything else is the failure this test looks for
        raise AssertionError(f"{case.name}: {type(exc).__name__}, not a MultinodeError: {exc}") from exc
    if isinstance(outcome, subprocess.CompletedProcess):
        stderr = outcome.stderr.strip()
        assert outcome.returncode in (1, 2), f"{case.name}: exit code {outcome.returncode}: {stderr}"
        assert "Traceback" not in stderr, f"{case.name}: {stderr}"
        if outcome.returncode == 1:
            assert len(stderr.splitlines()) == 1, f"{case.name}: not one line: {stderr}"
        return stderr
    raise AssertionError(f"{case.name}: accepted (returned {outcome!r})")


@pytest.mark.timeout(600)
def test_malformed_inputs_get_clear_errors_and_change_nothing(
    register, settings: MultinodeSettings, project_name: str, tmp_path: Path
) -> None:
    assert len(CASES) >= 40
    register({"main.py": GOOD})
    ctx = Context(settings, project_name, tmp_path, register)
    problems = []
    for case in CASES:
        before = _snapshot(settings, project_name)
        try:
            message = _error_of(case, ctx)
            assert case.fragment.lower() in message.lower(), f"{case.name}: {case.fragment!r} not in: {message}"
            assert not re.search(r"unexpected \w*(Error|Exception)", message), f"{case.name}: {message}"
            after = _snapshot(settings, project_name)
            assert after == before, f"{case.name}: changed {before} -> {after}"
            for name in [f"{project_name}-new", f"{project_name}-link", f"{project_name}-loop", "p" * 60]:
                assert not _project_exists(settings, name), f"{case.name}: project {name} created"
        except AssertionError as exc:
            problems.append(str(exc))
    assert not problems, "\n".join(problems)
