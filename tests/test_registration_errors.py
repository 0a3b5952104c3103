"""A registration error is one line naming the user's own file and line, never Multinode's stored copy;
the traceback (or uv's output) behind it is in a log whose path the line gives, and `--verbose` prints it."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from multinode._settings import MultinodeSettings
from multinode.control_plane.registration import register_async
from multinode.errors import InvalidTasksFolderError
from tests.helpers import write_tasks

MN = str(Path(sys.executable).parent / "mn")
LOG = re.compile(r" \(full (?:traceback|output): (\S+\.log)\)$")

HEAD = """
from multinode import Multinode

mn = Multinode()
"""
FUNCTION = """
@mn.function()
def f():
    return 1
"""


@dataclass(frozen=True)
class Case:
    files: dict[str, str]
    message: str  # str(error) without the log pointer; "tasks" is the folder as passed
    file: str
    line: int | None
    logged: str | None  # a text the log must hold, None when there is no log


CASES = {
    "syntax error": Case(
        {"main.py": HEAD + "\n@mn.function()\ndef broken(:\n    pass\n"},
        "tasks/main.py:6: SyntaxError: invalid syntax",
        "tasks/main.py",
        6,
        'File "tasks/main.py", line 6\n    def broken(:',
    ),
    "syntax error in a sibling module": Case(
        {"main.py": "from sub.helper import x\n" + HEAD, "sub/__init__.py": "", "sub/helper.py": "x = (1,\n"},
        "tasks/sub/helper.py:1: SyntaxError: '(' was never closed",
        "tasks/sub/helper.py",
        1,
        'File "tasks/main.py", line 1, in <module>\n    from sub.helper import x',
    ),
    "missing package": Case(
        {"main.py": "import os\nimport not_installed_pkg\n" + HEAD},
        "tasks/main.py:2 imports 'not_installed_pkg', which is not installed: add it to tasks/requirements.txt",
        "tasks/main.py",
        2,
        "ModuleNotFoundError: No module named 'not_installed_pkg'",
    ),
    "missing package in a sibling module": Case(
        {"main.py": "import sub.helper\n" + HEAD, "sub/__init__.py": "", "sub/helper.py": "x = 1\nimport foo_pkg\n"},
        "tasks/sub/helper.py:2 imports 'foo_pkg', which is not installed: add it to tasks/requirements.txt",
        "tasks/sub/helper.py",
        2,
        'File "tasks/sub/helper.py", line 2, in <module>\n    import foo_pkg',
    ),
    "missing local module": Case(
        {"main.py": "from sub.nope import x\n" + HEAD, "sub/__init__.py": ""},
        "tasks/main.py:1: ModuleNotFoundError: No module named 'sub.nope'",
        "tasks/main.py",
        1,
        "Traceback (most recent call last):",
    ),
    "exception at import time": Case(
        {"main.py": HEAD + "\ndef load():\n    return {}['key']\n\nCONFIG = load()\n"},
        "tasks/main.py:6: KeyError: 'key'",
        "tasks/main.py",
        6,
        'File "tasks/main.py", line 8, in <module>\n    CONFIG = load()',
    ),
    "duplicate names": Case(
        {"main.py": HEAD + FUNCTION + "\n" + FUNCTION},
        "tasks/main.py:10: Two functions are named 'f'; function names must be unique.",
        "tasks/main.py",
        10,
        "multinode.errors.ValidationError: Two functions are named 'f'",
    ),
    "async function": Case(
        {"main.py": HEAD + "\n@mn.function()\nasync def f():\n    return 1\n"},
        "tasks/main.py:5: f is async; Multinode functions are plain (sync) functions or generators: define it "
        "with `def f(...)` and run async code inside it with asyncio.run(...).",
        "tasks/main.py",
        5,
        'File "tasks/main.py", line 5, in <module>',
    ),
    "bad decorator option": Case(
        {"main.py": HEAD + "\n@mn.function(cpu=100)\ndef f():\n    return 1\n"},
        "tasks/main.py:5: cpu=100 is out of range: it must be more than 0 and at most 16.",
        "tasks/main.py",
        5,
        "    @mn.function(cpu=100)",
    ),
    "exit at import time": Case(
        {"main.py": "import sys\nsys.exit(3)\n"},
        "tasks/main.py:2: SystemExit: 3",
        "tasks/main.py",
        2,
        "SystemExit: 3",
    ),
    "no function": Case(
        {"main.py": "x = 1\n"},
        "tasks/main.py declares no function: create mn = Multinode() there and decorate at least one function "
        "with @mn.function().",
        "tasks/main.py",
        None,
        None,
    ),
    "unparseable .env": Case(
        {"main.py": HEAD + FUNCTION, ".env": "A=1\n\nFOO BAR=2\n"},
        "tasks/.env:3: cannot parse 'FOO BAR=2'; write NAME=value, quoting values with spaces.",
        "tasks/.env",
        3,
        None,
    ),
    "unparseable requirements.txt": Case(
        {"main.py": HEAD + FUNCTION, "requirements.txt": "# pins\nfoo===\n"},
        "tasks/requirements.txt:2: Couldn't parse requirement: Unexpected end of version specifier, expected "
        "version foo===",
        "tasks/requirements.txt",
        2,
        "error: Couldn't parse requirement in `tasks/requirements.txt` at position 7",
    ),
    "package that does not exist": Case(
        {"main.py": HEAD + FUNCTION, "requirements.txt": "this-package-does-not-exist-multinode-test==0.0.1\n"},
        "tasks/requirements.txt: No solution found when resolving dependencies: Because "
        "this-package-does-not-exist-multinode-test was not found in the package registry and you require "
        "this-package-does-not-exist-multinode-test==0.0.1, we can conclude that your requirements are unsatisfiable.",
        "tasks/requirements.txt",
        None,
        "error: No solution found when resolving dependencies",
    ),
}


def assert_one_clear_line(text: str) -> None:
    assert "\n" not in text and "Traceback" not in text
    assert "/code/" not in text, "names Multinode's stored copy instead of the user's folder"


def check_log(text: str, logged: str | None) -> None:
    """``text`` ends with the log pointer iff a log is expected; the log holds what lies behind the line."""
    found = LOG.search(text)
    if logged is None:
        assert found is None, text
        return
    assert found is not None, text
    log = Path(found.group(1))
    assert log.parent.name == "logs" and log.name.startswith("register-")
    content = log.read_text()
    assert logged in content, content
    assert "/code/" not in content, content


@pytest.mark.parametrize("case", CASES.values(), ids=list(CASES))
def test_register_error_names_the_users_file(
    case: Case, settings: MultinodeSettings, worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_tasks(tmp_path / "tasks", case.files)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InvalidTasksFolderError) as info:
        asyncio.run(register_async(Path("tasks"), "regerr", settings))
    error = info.value
    assert error.message == case.message
    assert (error.file, error.line, error.path) == (case.file, case.line, "tasks")
    assert_one_clear_line(str(error))
    check_log(str(error), case.logged)
    if case.logged is None:
        assert str(error) == case.message and error.log_path is None
    else:
        assert str(error).startswith(case.message)
        assert error.log_path and Path(error.log_path).parent == settings.home / "logs"
        assert error.details and case.logged in error.details


def test_absolute_path_is_shown_absolute(settings: MultinodeSettings, worker, tmp_path: Path) -> None:
    folder = write_tasks(tmp_path / "tasks", CASES["syntax error"].files)
    with pytest.raises(InvalidTasksFolderError) as info:
        asyncio.run(register_async(folder, "regerr", settings))
    assert info.value.message == f"{folder}/main.py:6: SyntaxError: invalid syntax"
    assert info.value.traceback and f'File "{folder}/main.py", line 6' in info.value.traceback


def mn_register(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [MN, "register", "tasks", "--project", "regerr", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=300,
    )


@pytest.mark.parametrize("name", ["syntax error", "missing package in a sibling module", "unparseable .env"])
def test_cli_prints_one_line(name: str, worker, tmp_path: Path) -> None:
    case = CASES[name]
    write_tasks(tmp_path / "tasks", case.files)
    done = mn_register(tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: {case.message}") and done.stderr.count("\n") == 1, done.stderr
    assert_one_clear_line(done.stderr.rstrip("\n"))
    check_log(done.stderr.rstrip("\n"), case.logged)
    assert done.stdout == ""


def test_cli_verbose_prints_the_traceback_above_the_line(worker, tmp_path: Path) -> None:
    case = CASES["exception at import time"]
    write_tasks(tmp_path / "tasks", case.files)
    done = mn_register(tmp_path, "--verbose")
    assert done.returncode == 1
    *trace, last = done.stderr.rstrip("\n").split("\n")
    assert last.startswith(f"error: {case.message} (full traceback: ")
    assert trace[0] == "Traceback (most recent call last):" and trace[-1] == "KeyError: 'key'"
    assert case.logged is not None and case.logged in "\n".join(trace)
    assert "/code/" not in done.stderr and "importlib" not in done.stderr and "_runtime" not in done.stderr


def test_cli_verbose_prints_uvs_output(worker, tmp_path: Path) -> None:
    case = CASES["unparseable requirements.txt"]
    write_tasks(tmp_path / "tasks", case.files)
    done = mn_register(tmp_path, "-v")
    assert done.returncode == 1
    *output, last = done.stderr.rstrip("\n").split("\n")
    assert last.startswith(f"error: {case.message} (full output: ")
    assert output[0] == "error: Couldn't parse requirement in `tasks/requirements.txt` at position 7"
    assert "/code/" not in done.stderr


def test_uv_summary_keeps_the_reason_of_a_failed_build() -> None:
    from multinode.artifacts.local import summarize_uv_error

    output = """
error: Failed to build `oldpkg==1.0`
  cause: Build backend failed to build wheel through `build_wheel` (exit status: 1)

         --- stderr
         Traceback (most recent call last):
           File "<string>", line 8, in <module>
         ModuleNotFoundError: No module named 'distutils'
         ---
  hint: This usually indicates a problem with the package or the build environment.
"""
    assert summarize_uv_error(output) == (
        "Failed to build `oldpkg==1.0`: Build backend failed to build wheel through `build_wheel` (exit status: 1): "
        "ModuleNotFoundError: No module named 'distutils' (hint: This usually indicates a problem with the package "
        "or the build environment.)"
    )


def test_store_paths_are_mapped_in_every_spelling(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from multinode.artifacts.local import shown_paths

    code_dir = tmp_path / "home" / "code" / "0123abcd"
    code_dir.mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    text = f"`{code_dir}/requirements.txt` `home/code/0123abcd/other.txt` {code_dir}"
    assert shown_paths(text, code_dir, Path("tasks")) == "`tasks/requirements.txt` `tasks/other.txt` tasks"
    assert shown_paths(text, code_dir, Path(".")) == "`requirements.txt` `other.txt` ."
