"""Bad input gets a clear error that says what to do, and nothing is left running."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from multinode import InvocationStatus, Multinode, MultinodeSettings, get_deployed_function
from multinode.control_plane.registration import register_async
from multinode.errors import (
    ControlPlaneUnavailableError,
    FunctionNotFoundError,
    InvalidTasksFolderError,
    InvocationFailedError,
    InvocationNotFoundError,
    PayloadError,
    ProjectNotFoundError,
    TemporalUnreachableError,
    ValidationError,
    VersionNotFoundError,
)
from tests.helpers import write_tasks

SIMPLE = """
from multinode import Multinode

mn = Multinode()

@mn.function()
def echo(value, times=1):
    return value * times
"""


def test_missing_folder_and_missing_main(register, tmp_path: Path) -> None:
    with pytest.raises(InvalidTasksFolderError, match="does not exist"):
        register(tmp_path / "nope")
    with pytest.raises(InvalidTasksFolderError, match="no main.py"):
        register({"other.py": "x = 1"})
    write_tasks(tmp_path / "repo" / "tasks", {"main.py": SIMPLE})
    with pytest.raises(InvalidTasksFolderError, match="it has a tasks/ folder"):
        register(tmp_path / "repo")


def test_syntax_and_import_errors_name_the_problem(register) -> None:
    with pytest.raises(InvalidTasksFolderError, match="SyntaxError") as info:
        register({"main.py": "def broken(:\n    pass\n"})
    assert "main.py" in str(info.value)
    with pytest.raises(InvalidTasksFolderError, match="imports 'not_installed_pkg', which is not installed"):
        register({"main.py": "import not_installed_pkg\n"})
    with pytest.raises(InvalidTasksFolderError, match="declares no function"):
        register({"main.py": "from multinode import Multinode\nmn = Multinode()\n"})


def test_bad_decorator_options_fail_registration(register) -> None:
    with pytest.raises(InvalidTasksFolderError, match="max_concurrency=101 is out of range"):
        register(
            {
                "main.py": """
                from multinode import Multinode
                mn = Multinode()

                @mn.function(max_concurrency=101)
                def f():
                    return 1
                """
            }
        )


def test_requirements_that_fail_to_install(register) -> None:
    with pytest.raises(InvalidTasksFolderError, match=r"requirements.txt: No solution found") as info:
        register({"main.py": SIMPLE, "requirements.txt": "this-package-does-not-exist-multinode-test==0.0.1\n"})
    assert "this-package-does-not-exist-multinode-test" in str(info.value)


def test_unknown_project_version_function_and_invocation(register, project_name: str) -> None:
    register({"main.py": SIMPLE})
    with pytest.raises(ProjectNotFoundError, match="mn register"):
        get_deployed_function("no-such-project", "echo").start(1)
    with pytest.raises(VersionNotFoundError, match="v9"):
        get_deployed_function(project_name, "echo", version_id="v9").start(1)
    with pytest.raises(FunctionNotFoundError, match=r"it has: echo"):
        get_deployed_function(project_name, "nope").start(1)
    fn = get_deployed_function(project_name, "echo")
    for method in (fn.get, fn.cancel, fn.await_result):
        with pytest.raises(InvocationNotFoundError):
            method("inv-does-not-exist")


def test_arguments_that_do_not_bind(register, project_name: str) -> None:
    register({"main.py": SIMPLE})
    fn = get_deployed_function(project_name, "echo")
    with pytest.raises(ValidationError, match=r"echo\(value, times=\.\.\.\).*missing a required argument: 'value'"):
        fn.start()
    with pytest.raises(ValidationError, match="unexpected keyword argument 'colour'"):
        fn.start(1, colour="red")
    with pytest.raises(ValidationError, match="too many positional arguments"):
        fn.start(1, 2, 3)
    assert fn.list().invocation_ids == []


def test_arguments_too_large_or_not_picklable(register, project_name: str) -> None:
    register({"main.py": SIMPLE})
    fn = get_deployed_function(project_name, "echo")
    with pytest.raises(PayloadError, match="over the limit of 250,000"):
        fn.start("x" * 250_001)
    with pytest.raises(PayloadError, match="cannot be pickled"):
        fn.start(lambda: 1)


def test_result_too_large_fails_the_invocation(register, project_name: str) -> None:
    register({"main.py": SIMPLE})
    fn = get_deployed_function(project_name, "echo")
    invocation_id = fn.start("ab", times=200_000)
    with pytest.raises(InvocationFailedError, match="over the limit of 250,000") as info:
        fn.await_result(invocation_id, timeout=60)
    assert info.value.error_type == "PayloadError"
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.FAILED and invocation.terminated


def test_temporal_not_reachable_says_how_to_start_it(settings: MultinodeSettings, tmp_path: Path) -> None:
    from tests.conftest import free_port

    unreachable = settings.model_copy(update={"temporal_profile": {"address": f"127.0.0.1:{free_port()}"}})
    fn = get_deployed_function("demo", "echo", settings=unreachable)
    with pytest.raises(TemporalUnreachableError, match="mn dev"):
        fn.start(1)
    folder = write_tasks(tmp_path / "tasks", {"main.py": SIMPLE})
    with pytest.raises(TemporalUnreachableError, match="mn dev"):
        asyncio.run(register_async(folder, "demo", unreachable))


def test_no_control_plane_worker(settings: MultinodeSettings, tmp_path: Path) -> None:
    folder = write_tasks(tmp_path / "tasks", {"main.py": SIMPLE})
    fast = settings.model_copy(update={"worker_wait_seconds": 1.0})
    with pytest.raises(ControlPlaneUnavailableError, match="mn worker"):
        asyncio.run(register_async(folder, "demo", fast))


def test_decorator_validation_at_decoration_time() -> None:
    mn = Multinode()
    cases = [
        ({"cpu": 17}, "cpu=17 is out of range"),
        ({"cpu": 0}, "cpu=0 is out of range"),
        ({"cpu": "2"}, "cpu must be a number"),
        ({"memory": "65 GiB"}, 'over the limit of "64 GiB"'),
        ({"memory": "lots"}, "not a size"),
        ({"memory": 512}, "memory must be a string"),
        ({"timeout": timedelta(hours=25)}, "at most 24 hours"),
        ({"timeout": 30}, "timeout must be a datetime.timedelta"),
        ({"max_concurrency": 0}, "max_concurrency=0 is out of range"),
        ({"max_concurrency": 101}, "from 1 to 100"),
        ({"max_retries": 51}, "from 0 to 50"),
        ({"max_retries": 1.5}, "max_retries must be an integer"),
    ]
    limits = {"cpu": "at most 16", "memory": '"64 GiB"', "timeout": "at most 24 hours"}
    for options, message in cases:
        with pytest.raises(ValidationError, match=message) as info:
            mn.function(**options)(lambda: None)
        parameter = next(iter(options))
        assert info.value.parameter == parameter  # type: ignore[attr-defined]
        assert limits.get(parameter, "") in str(info.value)  # every error states the range too
    with pytest.raises(ValidationError, match="Did you forget parentheses"):
        mn.function(lambda: None)  # type: ignore[arg-type]


def test_cli_errors_print_one_line_and_exit_1(settings: MultinodeSettings, tmp_path: Path) -> None:
    mn = str(Path(sys.executable).parent / "mn")
    done = subprocess.run([mn, "register", str(tmp_path / "missing"), "--project", "p"], capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.startswith("error: Tasks folder") and done.stderr.count("\n") == 1
    done = subprocess.run([mn, "get", "inv-missing"], capture_output=True, text=True)
    assert done.returncode == 1 and "No invocation with id 'inv-missing'" in done.stderr
