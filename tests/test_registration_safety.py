"""Registration stays inside the tasks folder, kills what main.py starts at import, refuses a malformed
``.env``, never reuses a version id after ``mn delete``, and leaves nothing behind when it fails."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from multinode import get_deployed_function
from multinode._client import get_client
from multinode._protocol import ProjectState, VersionRecord
from multinode._registry import list_projects, read_project
from multinode._settings import MultinodeSettings
from multinode.artifacts.image import write_build_context
from multinode.control_plane.admin import delete_project_and_invocations
from multinode.control_plane.registration import register_async
from multinode.errors import (
    InvalidTasksFolderError,
    ProjectNotFoundError,
    ValidationError,
    VersionNotFoundError,
)
from tests.helpers import assert_eventually, write_tasks

MN = str(Path(sys.executable).parent / "mn")
MAIN = """
from multinode import Multinode

mn = Multinode()

@mn.function()
def f():
    return 1
"""


def stored(settings: MultinodeSettings) -> dict[str, list[str]]:
    """The stored copies and environments (lock files and hidden temporary folders included)."""
    return {name: sorted(os.listdir(settings.home / name)) for name in ("code", "envs")}


def register_tasks(settings: MultinodeSettings, project: str, folder: str = "tasks") -> VersionRecord:
    """Register ``folder`` as the user names it from the working directory (errors say ``tasks/...``)."""
    return asyncio.run(register_async(Path(folder), project, settings))


def projects(settings: MultinodeSettings) -> list[str]:
    async def go() -> list[str]:
        return await list_projects(await get_client(settings))

    return asyncio.run(go())


def running_commands(command: str) -> list[int]:
    """Live processes whose command line is exactly ``command``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and b" ".join(cmdline).decode(errors="replace") == command:
            found.append(int(entry))
    return found


# --- symbolic links -----------------------------------------------------------------------------


@pytest.mark.timeout(120)
def test_link_out_of_the_folder_is_refused_and_nothing_is_stored(
    settings: MultinodeSettings, worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, project_name: str
) -> None:
    outside = tmp_path / "home-of-the-user"
    (outside / ".ssh").mkdir(parents=True)
    (outside / ".ssh" / "secret").write_text("private key")
    folder = write_tasks(tmp_path / "tasks", {"main.py": MAIN})
    (folder / "home").symlink_to(outside, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    before = stored(settings)
    with pytest.raises(InvalidTasksFolderError) as info:
        register_tasks(settings, project_name)
    assert info.value.message == (
        f"tasks/home is a symbolic link to {outside}, outside the tasks folder: a version holds only what is "
        "inside the folder; copy what it needs into the folder instead."
    )
    assert info.value.file == "tasks/home"
    assert stored(settings) == before
    assert not list((settings.home / "code").rglob("secret"))
    with pytest.raises(ProjectNotFoundError):
        asyncio.run(_read(settings, project_name))

    # A link to one file outside (a .env kept elsewhere, say) too, and the image's build context as well.
    (folder / "home").unlink()
    (outside / "app.env").write_text("TOKEN=abc\n")
    (folder / ".env").symlink_to(outside / "app.env")
    with pytest.raises(InvalidTasksFolderError, match=r"^tasks/\.env is a symbolic link to .*app\.env, outside"):
        register_tasks(settings, project_name)
    with pytest.raises(InvalidTasksFolderError, match=r"\.env is a symbolic link to .*app\.env, outside"):
        write_build_context(folder, tmp_path / "context")
    assert not (tmp_path / "context" / "tasks" / ".env").exists()
    done = subprocess.run(
        [MN, "build-context", "tasks", "--out", str(tmp_path / "context2")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stderr.startswith("error: tasks/.env is a symbolic link to "), done.stderr
    assert stored(settings) == before


async def _read(settings: MultinodeSettings, project: str) -> ProjectState:
    return await read_project(await get_client(settings), project)


@pytest.mark.timeout(180)
def test_links_inside_the_folder_are_stored_as_their_content(
    settings: MultinodeSettings, worker, tmp_path: Path, project_name: str
) -> None:
    folder = write_tasks(
        tmp_path / "tasks",
        {
            "main.py": MAIN.replace("return 1", "return VALUE + OTHER")
            + "\nfrom alias import VALUE\nfrom shared.real import VALUE as OTHER\n",
            "lib/__init__.py": "",
            "lib/real.py": "VALUE = 7\n",
        },
    )
    (folder / "alias.py").symlink_to("lib/real.py")
    (folder / "shared").symlink_to(folder / "lib", target_is_directory=True)  # absolute, still inside
    (folder / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)  # left out, as a .venv folder is
    record = asyncio.run(register_async(folder, project_name, settings))
    code = settings.home / "code" / record.code_digest
    assert (code / "alias.py").read_text() == "VALUE = 7\n" and not (code / "alias.py").is_symlink()
    assert (code / "shared" / "real.py").is_file() and not (code / "shared").is_symlink()
    assert not (code / ".venv").exists()
    context = tmp_path / "context"
    write_build_context(folder, context)
    assert (context / "tasks" / "alias.py").read_text() == "VALUE = 7\n"
    assert not (context / "tasks" / "alias.py").is_symlink() and (context / "tasks" / "shared" / "real.py").is_file()
    assert get_deployed_function(project_name, "f").call_remote() == 14


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("links", "message"),
    [
        ({"sub/loop": ".."}, "tasks/sub/loop is a symbolic link loop: it points to tasks, a folder that holds it."),
        (
            {"sub/deeper/up": "../.."},
            "tasks/sub/deeper/up is a symbolic link loop: it points to tasks, a folder that holds it.",
        ),
        ({"sub/self": "."}, "tasks/sub/self is a symbolic link loop: it points to tasks/sub, a folder that holds it."),
        ({"a": "b", "b": "a"}, "tasks/a is a symbolic link loop: it leads back to itself; remove it."),
        ({"gone.py": "missing.py"}, "tasks/gone.py is a symbolic link to missing.py, which does not exist: remove it."),
    ],
    ids=["to-its-parent", "to-an-ancestor", "to-itself", "to-each-other", "dangling"],
)
def test_link_loops_give_one_short_line(
    links: dict[str, str],
    message: str,
    settings: MultinodeSettings,
    worker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    project_name: str,
) -> None:
    folder = write_tasks(tmp_path / "tasks", {"main.py": MAIN, "sub/deeper/x.txt": "x"})
    for link, target in links.items():
        (folder / link).symlink_to(target)
    monkeypatch.chdir(tmp_path)
    before = stored(settings)
    with pytest.raises(InvalidTasksFolderError) as info:
        register_tasks(settings, project_name)
    assert str(info.value) == message
    assert stored(settings) == before


# --- processes started at import -----------------------------------------------------------------


@pytest.mark.timeout(90)
@pytest.mark.parametrize(
    "popen",
    [
        'subprocess.Popen(["sleep", "SECONDS"])',
        'subprocess.Popen(["setsid", "sleep", "SECONDS"])',
        'subprocess.Popen(["setsid", "--fork", "sleep", "SECONDS"])',  # a daemon: its parent ends at once
        'subprocess.Popen(["sleep", "SECONDS"], start_new_session=True, stdout=subprocess.PIPE)',
    ],
    ids=["child", "setsid", "daemon", "new-session"],
)
def test_a_helper_started_at_import_is_killed_and_refuses_the_version(
    popen: str,
    settings: MultinodeSettings,
    worker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    project_name: str,
) -> None:
    write_tasks(tmp_path / "warm", {"main.py": MAIN})
    monkeypatch.chdir(tmp_path)
    register_tasks(settings, project_name, "warm")  # the environment exists: what follows only imports
    seconds = f"300.{uuid.uuid4().int % 10**9}"  # a command line no other process has
    popen = popen.replace("SECONDS", seconds)
    folder = write_tasks(tmp_path / "tasks", {"main.py": f"import subprocess\n{popen}\n" + MAIN})
    before = stored(settings)
    started = time.monotonic()
    with pytest.raises(InvalidTasksFolderError) as info:
        register_tasks(settings, project_name)
    assert time.monotonic() - started < 30, "registration waited for the helper"
    assert re.fullmatch(
        rf"tasks/main\.py started a process at import \(pid \d+: `sleep {re.escape(seconds)}`\) that was still "
        r"running after the import \(now killed\); start helpers inside the function, not at import: they would "
        r"run in every container\.",
        str(info.value),
    ), str(info.value)
    assert info.value.file == "tasks/main.py"
    assert running_commands(f"sleep {seconds}") == []
    assert stored(settings) == before
    assert asyncio.run(_read(settings, project_name)).versions[-1].version_id == "v1"  # nothing recorded
    assert folder.is_dir()


@pytest.mark.timeout(90)
def test_an_import_that_hangs_is_killed_with_its_helpers(
    settings: MultinodeSettings, worker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, project_name: str
) -> None:
    import multinode.control_plane.registration as registration

    write_tasks(tmp_path / "warm", {"main.py": MAIN})
    monkeypatch.chdir(tmp_path)
    register_tasks(settings, project_name, "warm")
    seconds = f"300.{uuid.uuid4().int % 10**9}"
    main = f"import subprocess, time\nsubprocess.Popen(['setsid', '--fork', 'sleep', '{seconds}'])\ntime.sleep(600)\n"
    write_tasks(tmp_path / "tasks", {"main.py": main + MAIN})
    monkeypatch.setattr(registration, "IMPORT_CHECK_TIMEOUT_SECONDS", 3)
    before = stored(settings)
    with pytest.raises(InvalidTasksFolderError) as info:
        register_tasks(settings, project_name)
    assert str(info.value) == "Importing tasks/main.py took longer than 3 s."
    assert running_commands(f"sleep {seconds}") == []
    assert stored(settings) == before


@pytest.mark.timeout(60)
def test_a_process_that_ends_during_the_import_is_fine(settings: MultinodeSettings, register) -> None:
    main = 'import subprocess\nsubprocess.run(["true"], check=True)\nsubprocess.Popen(["true"]).wait()\n' + MAIN
    assert register({"main.py": main}).version_id == "v1"


# --- .env ------------------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("line", "shown"), [("FOO BAR", "'FOO BAR'"), ('="x"', "'=\"x\"'")], ids=["no-equals", "no-name"]
)
def test_a_malformed_env_line_is_named(
    line: str,
    shown: str,
    settings: MultinodeSettings,
    worker,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    project_name: str,
) -> None:
    write_tasks(tmp_path / "tasks", {"main.py": MAIN, ".env": f"# settings\nTOKEN=abc\n{line}\nOTHER=1\n"})
    monkeypatch.chdir(tmp_path)
    before = stored(settings)
    with pytest.raises(InvalidTasksFolderError) as info:
        register_tasks(settings, project_name)
    assert str(info.value) == f"tasks/.env:3: cannot parse {shown}; write NAME=value, quoting values with spaces."
    assert (info.value.file, info.value.line) == ("tasks/.env", 3)
    assert stored(settings) == before


# --- version ids -----------------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_version_ids_are_not_reused_after_delete(settings: MultinodeSettings, register, project_name: str) -> None:
    assert register({"main.py": MAIN}).version_id == "v1"
    assert project_name in projects(settings)
    asyncio.run(delete_project_and_invocations(settings, project_name))
    assert project_name not in projects(settings)
    with pytest.raises(ProjectNotFoundError):
        get_deployed_function(project_name, "f").start()
    with pytest.raises(ProjectNotFoundError):
        get_deployed_function(project_name, "f", version_id="v1").start()
    with pytest.raises(ProjectNotFoundError):
        asyncio.run(delete_project_and_invocations(settings, project_name))  # deleting twice

    assert register({"main.py": MAIN.replace("return 1", "return 2")}).version_id == "v2"
    assert project_name in projects(settings)
    with pytest.raises(VersionNotFoundError):
        get_deployed_function(project_name, "f", version_id="v1").start()
    state = asyncio.run(_read(settings, project_name))
    assert [v.version_id for v in state.versions] == ["v2"]
    assert get_deployed_function(project_name, "f").call_remote() == 2

    asyncio.run(delete_project_and_invocations(settings, project_name))
    assert register({"main.py": MAIN}).version_id == "v3"
    done = subprocess.run([MN, "describe", project_name, "--json"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"v3"' in done.stdout and '"v2"' not in done.stdout and '"v1"' not in done.stdout


@pytest.mark.timeout(120)
def test_numbering_continues_after_a_registry_run_that_ended(
    settings: MultinodeSettings, register, project_name: str
) -> None:
    """A project deleted before deletions left a tombstone: its registry run ended (here: terminated)."""
    assert register({"main.py": MAIN}).version_id == "v1"

    async def end_the_run() -> None:
        client = await get_client(settings)
        await client.get_workflow_handle(f"multinode-project:{project_name}").terminate("deleted the old way")

    asyncio.run(end_the_run())
    with pytest.raises(ProjectNotFoundError):
        asyncio.run(_read(settings, project_name))
    assert register({"main.py": MAIN}).version_id == "v2"


# --- failed registrations leave nothing behind ----------------------------------------------------

FAILURES = {
    "import-error": ({"main.py": "raise RuntimeError('boom')\n"}, InvalidTasksFolderError),
    "unparseable-requirements": ({"main.py": MAIN, "requirements.txt": "foo===\n"}, InvalidTasksFolderError),
    "helper-at-import": (
        {"main.py": "import subprocess\nsubprocess.Popen(['sleep', '299'])\n" + MAIN},
        InvalidTasksFolderError,
    ),
    "no-function": ({"main.py": "x = 1\n"}, InvalidTasksFolderError),
    "link-out": ({"main.py": MAIN, "out": "->/"}, InvalidTasksFolderError),
    "malformed-env": ({"main.py": MAIN, ".env": "FOO BAR\n"}, InvalidTasksFolderError),
    "name-refused": ({"main.py": MAIN}, ValidationError),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("case", list(FAILURES))
def test_a_failed_registration_leaves_nothing_behind(
    case: str, settings: MultinodeSettings, worker, tmp_path: Path, project_name: str
) -> None:
    files, error = FAILURES[case]
    # Unique content and requirements: the failing registration creates its own copy and environment.
    unique = f"# {uuid.uuid4().hex}\n"
    files = {name: (unique + text if name.endswith((".py", ".txt")) else text) for name, text in files.items()}
    files.setdefault("requirements.txt", unique)
    links = {name: text[2:] for name, text in files.items() if text.startswith("->")}
    folder = write_tasks(tmp_path / "tasks", {n: t for n, t in files.items() if n not in links})
    for name, target in links.items():
        (folder / name).symlink_to(target)
    before = stored(settings)
    with pytest.raises(error):
        asyncio.run(register_async(folder, "bad name!" if case == "name-refused" else project_name, settings))
    assert stored(settings) == before
    assert project_name not in projects(settings)
    with pytest.raises(ProjectNotFoundError):
        asyncio.run(_read(settings, project_name))


@pytest.mark.timeout(120)
def test_a_failure_keeps_an_environment_that_a_registered_version_uses(
    settings: MultinodeSettings, register, project_name: str
) -> None:
    requirements = f"# {uuid.uuid4().hex}\n"
    record = register({"main.py": MAIN, "requirements.txt": requirements})
    env_dir = settings.home / "envs" / record.artifact["env_key"]
    before = stored(settings)
    with pytest.raises(InvalidTasksFolderError):
        register({"main.py": "raise RuntimeError('boom')\n", "requirements.txt": requirements})
    assert stored(settings) == before and (env_dir / ".multinode-ready").exists()
    assert get_deployed_function(project_name, "f").call_remote() == 1


@pytest.mark.timeout(120)
def test_an_interrupted_registration_leaves_nothing_behind(
    settings: MultinodeSettings, worker, tmp_path: Path, project_name: str
) -> None:
    marker = tmp_path / "importing"
    main = f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\ntime.sleep(120)\n# {uuid.uuid4().hex}\n"
    write_tasks(tmp_path / "tasks", {"main.py": main + MAIN, "requirements.txt": f"# {uuid.uuid4().hex}\n"})
    before = stored(settings)
    # As from a terminal: Ctrl-C's SIGINT is not ignored. (A CI runner may start the suite with SIGINT
    # ignored, as shells do for background jobs; exec keeps that, and Python then never sees SIGINT.)
    with_sigint = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", with_sigint, MN, "register", "tasks", "--project", project_name],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        # On a hang, SIGABRT makes it print every thread's stack (to tell where it waits).
        env={**os.environ, "PYTHONFAULTHANDLER": "1"},
    )
    try:
        assert_eventually(marker.exists, timeout=90, message="the import check started")
        assert stored(settings) != before  # the copy and the environment exist now
        process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            _, stacks = process.communicate(timeout=30)
            raise AssertionError(f"`mn register` did not end within 30 s of SIGINT; its threads:\n{stacks}") from None
    finally:
        process.kill()
        process.wait()
    assert process.returncode != 0, err
    assert "Traceback" not in err, err
    assert stored(settings) == before
    assert project_name not in projects(settings)
