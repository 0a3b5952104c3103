"""A decorated function carries its signature and result type to a type checker (mypy here)."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest

from multinode import Multinode
from multinode._config import OPTIONS, build_function_config

CHECKED = """
from collections.abc import Generator, Iterator
from typing import Any, assert_type

from multinode import Multinode

mn = Multinode()


@mn.function(cpu=1)
def add(a: int, b: int = 0) -> float:
    return a + b / 2


@mn.function()
def count(n: int) -> Generator[int, None, None]:
    yield from range(n)


@mn.function()
def progress(n: int) -> Iterator[str]:
    for i in range(n):
        yield str(i)


assert_type(add(1, 2), float)
assert_type(add.start(1, b=2), str)
assert_type(add.call_remote(1), float)
assert_type(add.await_result("inv-1"), float)
assert_type(add.map([1, 2]), Iterator[float])
assert_type(progress.call_remote(3), str)
assert_type(count.call_remote(3), int)
assert_type(count(3), Generator[int, Any, Any])
"""

WRONG = """
from multinode import Multinode

mn = Multinode()


@mn.function()
def add(a: int, b: int = 0) -> int:
    return a + b


add.start("one")
add.call_remote(1, c=3)
text: str = add.call_remote(1)
"""


def _mypy(tmp_path: Path, source: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "main.py"
    path.write_text(source)
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--no-incremental", "--follow-imports=silent", str(path)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        # The package as an application sees it (an editable install's import hook is invisible to mypy).
        env={**os.environ, "MYPYPATH": str(Path(__file__).resolve().parent.parent)},
    )


@pytest.mark.timeout(300)
def test_a_decorated_function_is_typed_after_its_definition(tmp_path: Path) -> None:
    done = _mypy(tmp_path, CHECKED)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(300)
def test_wrong_arguments_and_results_are_type_errors(tmp_path: Path) -> None:
    done = _mypy(tmp_path, WRONG)
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stdout.splitlines() if ": error:" in line]
    assert len(errors) == 3, done.stdout
    assert '"start" of "Function" has incompatible type "str"' in done.stdout, done.stdout
    assert 'Unexpected keyword argument "c"' in done.stdout, done.stdout
    assert 'Incompatible types in assignment (expression has type "int", variable has type "str")' in done.stdout


def test_the_decorator_options_are_the_configs() -> None:
    decorator = inspect.signature(Multinode.function).parameters
    builder = inspect.signature(build_function_config).parameters
    keyword = [name for name, p in decorator.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    assert tuple(keyword) == OPTIONS == ("cpu", "memory", "max_concurrency", "timeout", "max_retries")
    assert all(decorator[name].default == builder[name].default for name in OPTIONS)
