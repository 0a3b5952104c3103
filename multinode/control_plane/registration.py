"""``mn register``: check a tasks folder, store it as a version, record its functions in Temporal.

Its errors name the user's own files as the user named the folder (``tasks/main.py:12``), never the
stored copy that was imported; what lies behind a one-line error goes to a log in
``$MULTINODE_HOME/logs/``, whose path the error carries.

A registration that fails, or is interrupted, leaves nothing behind: the stored copy and environment
it created are removed (``LocalVersionStore.discard``), and nothing is recorded in the registry.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from temporalio.client import WorkflowUpdateFailedError

from multinode._client import get_client
from multinode._config import FunctionConfig
from multinode._credentials import credential_free_env
from multinode._limits import check_registered_names
from multinode._protocol import FunctionRecord, Parameter, VersionRecord, VersionRegistration
from multinode._registry import check_control_plane, check_project_name, register_version
from multinode._settings import MultinodeSettings
from multinode.artifacts.fargate_version import import_check_python, version_dotenv, version_image
from multinode.artifacts.local import (
    SUMMARY_MAX_CHARS,
    BuildCancelled,
    BuiltVersion,
    LocalVersionStore,
    shown_paths,
    tasks_files,
)
from multinode.errors import ConfigurationError, InvalidTasksFolderError, MultinodeError, ValidationError
from multinode.provisioner._local_shim import descendants, group_members, kill_tree, send_signal

PROVISIONERS = ("local", "fargate")
"""Container backends a version can be registered for."""
IMPORT_CHECK_TIMEOUT_SECONDS = 300
"""Longest ``main.py`` may take to import at registration."""
KEPT_LOGS = 50
"""Registration logs kept in ``$MULTINODE_HOME/logs/``; older ones are removed."""
IMPORT_CHECK_TAG = "MULTINODE_IMPORT_CHECK"
"""Environment variable that marks the import check's processes (their helpers inherit it)."""
KILL_TIMEOUT_SECONDS = 10.0
"""Longest registration keeps killing what the import check left."""

T = TypeVar("T")


def check_tasks_folder(path: Path) -> Path:
    folder = path.expanduser().resolve()
    if not folder.exists():
        raise InvalidTasksFolderError(f"Tasks folder {path} does not exist.", path=str(path))
    if not folder.is_dir():
        raise InvalidTasksFolderError(
            f"{path} is not a folder; pass the tasks folder that holds main.py.", path=str(path)
        )
    if not (folder / "main.py").is_file():
        hint = " (it has a tasks/ folder: pass that)" if (folder / "tasks" / "main.py").is_file() else ""
        raise InvalidTasksFolderError(
            f"{path} has no main.py{hint}; main.py declares the @mn.function() functions.", path=str(path)
        )
    tasks_files(folder, shown_as=path)  # refuses links out of the folder, link loops and special files
    return folder


def check_env_file(folder: Path, shown: Path) -> None:
    """python-dotenv skips a line it cannot parse, which would surface later as a missing variable."""
    from dotenv.parser import parse_stream

    env_file = folder / ".env"
    if not env_file.is_file():
        return
    name = shown / ".env"
    try:
        text = env_file.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidTasksFolderError(
            f"{name}: not UTF-8 text ({exc.reason}).", path=str(shown), file=str(name)
        ) from None
    for binding in parse_stream(io.StringIO(text)):
        if binding.error:
            # A binding's text starts with the blank lines before it; its line number does not count them.
            lines = binding.original.string.splitlines()
            skipped = next((i for i, row in enumerate(lines) if row.strip()), 0)
            line, bad = binding.original.line + skipped, lines[skipped].strip()
            raise InvalidTasksFolderError(
                f"{name}:{line}: cannot parse {bad!r}; write NAME=value, quoting values with spaces.",
                path=str(shown),
                file=str(name),
                line=line,
            )


def inspect_version(
    built: BuiltVersion, shown: Path, cancelled: threading.Event | None = None
) -> dict[str, FunctionRecord]:
    """Import main.py in the version's own environment and read back its functions.

    ``shown`` is the tasks folder as the user named it, for the errors. The import runs in a session of
    its own, its output goes to files (a helper that inherits them cannot hold registration up), and
    every process it leaves running is killed and refuses the version.
    """
    main_py = shown / "main.py"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "functions.json"
        tag = uuid.uuid4().hex
        env = {k: v for k, v in credential_free_env(os.environ).items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        env[IMPORT_CHECK_TAG] = tag
        with open(Path(tmp) / "stdout", "w+") as stdout, open(Path(tmp) / "stderr", "w+") as stderr:
            process = subprocess.Popen(
                [str(built.python), "-m", "multinode._runtime.inspect", str(out)],
                cwd=built.code_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                text=True,
                start_new_session=True,
            )
            ended = False
            try:
                ended = _wait_for_exit(process, IMPORT_CHECK_TIMEOUT_SECONDS, cancelled)
            finally:
                stragglers = _stop_import_check(process, tag, ended=ended)
            stdout.seek(0)
            stderr.seek(0)
            output_text, error_text = stdout.read(), stderr.read()
        if not ended:
            raise InvalidTasksFolderError(
                f"Importing {main_py} took longer than {IMPORT_CHECK_TIMEOUT_SECONDS} s.", path=str(shown)
            )
        if not out.exists():
            output = shown_paths((error_text or output_text).strip(), built.code_dir, shown)
            raise InvalidTasksFolderError(
                f"Importing {main_py} stopped the interpreter (exit code {process.returncode}).",
                path=str(shown),
                file=str(main_py),
                details=output or None,
            )
        report = json.loads(out.read_text())
    if "error" in report:
        raise import_error(report["error"], built.code_dir, shown)
    leftover = {item["pid"]: item["command"] for item in [*report.get("leftover", []), *stragglers]}
    if leftover:
        raise leftover_error(leftover, built.code_dir, shown)
    functions = {
        item["name"]: FunctionRecord(
            name=item["name"],
            config=FunctionConfig(**item["config"]),
            parameters=[Parameter(**p) for p in item["parameters"]],
        )
        for item in report["functions"]
    }
    if not functions:
        raise InvalidTasksFolderError(
            f"{main_py} declares no function: create mn = Multinode() there and decorate at least one function "
            "with @mn.function().",
            path=str(shown),
            file=str(main_py),
        )
    return functions


def _wait_for_exit(process: subprocess.Popen[str], timeout: float, cancelled: threading.Event | None) -> bool:
    """Whether ``process`` ended within ``timeout``. It is not reaped: while it is a zombie its pid, the id of
    its process group, cannot name another group."""
    deadline = time.monotonic() + timeout
    pause = 0.002
    while True:
        if hasattr(os, "waitid"):
            if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        elif process.poll() is not None:
            return True
        if cancelled is not None and cancelled.is_set():
            raise BuildCancelled()
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def _stop_import_check(process: subprocess.Popen[str], tag: str, *, ended: bool) -> list[dict[str, Any]]:
    """Kill the import check and whatever it left (below it, in its process group, or carrying its tag in
    the environment: a helper that left the session after the check ended); return those still running."""
    from multinode._runtime.inspect import process_command

    def look() -> list[int]:
        found = {*descendants(process.pid), *_tagged(tag)}
        try:
            found.update(group_members(process.pid))
        except OSError:
            pass  # no /proc
        return sorted(found - {process.pid, os.getpid()})

    running = {pid: command for pid in look() if (command := process_command(pid)) is not None}
    if not ended:
        kill_tree(process.pid, KILL_TIMEOUT_SECONDS)  # a check that timed out, or was interrupted
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    deadline = time.monotonic() + KILL_TIMEOUT_SECONDS
    while (left := [pid for pid in look() if process_command(pid) is not None]) and time.monotonic() < deadline:
        for pid in left:
            running.setdefault(pid, process_command(pid) or "")
            send_signal(pid, signal.SIGKILL)
        time.sleep(0.01)
    process.kill()
    process.wait()
    own = " ".join(str(arg) for arg in process.args) if isinstance(process.args, list) else ""
    return [
        {"pid": pid, "command": command if command != own else "a fork of the import"}
        for pid, command in running.items()
    ]


def _tagged(tag: str) -> list[int]:
    """Processes of this user whose environment carries the import check's tag."""
    marker = f"{IMPORT_CHECK_TAG}={tag}".encode()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    found = []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:
            continue
        if marker in environ.split(b"\0"):
            found.append(int(entry))
    return found


def leftover_error(leftover: dict[int, str], code_dir: Path, shown: Path) -> InvalidTasksFolderError:
    """The error for processes main.py started at import that still ran after it (they were killed)."""
    main_py = shown / "main.py"
    named = []
    for pid, command in sorted(leftover.items())[:3]:
        command = " ".join(shown_paths(command, code_dir, shown).split())
        command = command if len(command) <= 60 else command[:57] + "..."
        named.append(f"pid {pid}: `{command}`")
    if len(leftover) > 3:
        named.append(f"{len(leftover) - 3} more")
    what = "a process" if len(leftover) == 1 else "processes"
    verb = "was" if len(leftover) == 1 else "were"
    return InvalidTasksFolderError(
        f"{main_py} started {what} at import ({', '.join(named)}) that {verb} still running after the import "
        "(now killed); start helpers inside the function, not at import: they would run in every container.",
        path=str(shown),
        file=str(main_py),
    )


def import_error(error: dict[str, Any], code_dir: Path, shown: Path) -> InvalidTasksFolderError:
    """The one-line error for an import failure described by ``multinode._runtime.inspect``."""
    file = str(shown / (error["file"] or "main.py"))  # no frame in the folder: it broke importing main.py
    line: int | None = error["line"]
    where = file if line is None else f"{file}:{line}"
    requirements = shown / "requirements.txt"
    missing = error["missing_module"]
    if missing and error["imported_directly"]:
        message = f"{where} imports {missing!r}, which is not installed: add it to {requirements}"
    elif missing:
        message = (
            f"{where}: a package imported there needs {missing!r}, which is not installed: add it to {requirements}"
        )
    else:
        text = " ".join(_shown(error["message"], error["root"], code_dir, shown).split())
        if len(text) > SUMMARY_MAX_CHARS:
            text = text[: SUMMARY_MAX_CHARS - 3] + "..."
        # Multinode's own errors (a rejected decorator option) are written for the user already.
        what = text if error["multinode"] else f"{error['type']}: {text}" if text else error["type"]
        message = f"{where}: {what}"
    trace = _shown(error["traceback"], error["root"], code_dir, shown).rstrip()
    return InvalidTasksFolderError(message, path=str(shown), details=trace, file=file, line=line, traceback=trace)


def _shown(text: str, root: str, code_dir: Path, shown: Path) -> str:
    return shown_paths(shown_paths(text, Path(root), shown), code_dir, shown)


def write_log(home: Path, folder: Path, error: InvalidTasksFolderError) -> Path:
    """Keep what lies behind ``error`` in ``$MULTINODE_HOME/logs/register-TIME.log``; return its path."""
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    now = datetime.now()
    path = logs / f"register-{now:%Y%m%d-%H%M%S}-{os.getpid()}.log"
    path.write_text(
        f"Registering {folder} at {now.isoformat(timespec='seconds')}\n\n{error.message}\n\n{error.details}\n"
    )
    for old in sorted(logs.glob("register-*.log"))[:-KEPT_LOGS]:  # names sort by time
        old.unlink(missing_ok=True)
    return path


async def register_async(
    path: Path,
    project_name: str,
    settings: MultinodeSettings,
    *,
    provisioner: str | None = None,
    image: str | None = None,
) -> VersionRecord:
    """Register ``path`` as a new version of ``project_name``.

    Every version is stored and checked locally (code, environment, import of main.py). For the
    ``fargate`` provisioner the environment and the import run on the image's Python version, and the
    version records its image pinned by digest: ``image`` (built elsewhere from ``mn build-context``)
    once ECR (or the Docker CLI) shows it exists, or the folder's image, reused if the repository holds
    its content tag, else built and pushed with Docker. Its ``.env`` goes to the registry, not the image.
    """
    check_project_name(project_name)
    backend = provisioner or ("fargate" if image else settings.provisioner)
    if backend not in PROVISIONERS:
        raise ConfigurationError(
            f"Unknown provisioner {backend!r}: use one of {', '.join(PROVISIONERS)}.", parameter="provisioner"
        )
    if image is not None and backend != "fargate":
        raise ConfigurationError("--image applies to the fargate provisioner only.", parameter="image")
    if image is not None and (not image.strip() or any(c.isspace() for c in image)):
        raise ConfigurationError(f"--image {image!r} is not an image URI.", parameter="image")
    folder = check_tasks_folder(path)
    check_env_file(folder, path)
    fargate = backend == "fargate"
    dotenv = version_dotenv(folder, path, settings) if fargate else ""
    python = import_check_python() if fargate else None
    client = await get_client(settings)
    await check_control_plane(client, settings)
    store = LocalVersionStore(settings.home)
    cancelled = threading.Event()  # set when the registration is interrupted: the threads stop early
    built: BuiltVersion | None = None
    try:
        # An image built elsewhere is checked first: a missing one fails before the environment is built.
        pinned: str | None = None
        if image is not None:
            pinned = await _in_thread(cancelled, partial(version_image, folder, project_name, image))
        built = await _in_thread(
            cancelled,
            partial(store.build, folder, shown_as=path, cancelled=cancelled, python=python),
            undo=store.discard,
        )
        functions = await _in_thread(cancelled, partial(inspect_version, built, path, cancelled))
        check_registered_names(project_name, functions, path)
        artifact = dict(built.artifact)
        if fargate and pinned is None:
            pinned = await _in_thread(cancelled, partial(version_image, folder, project_name, None))
        if pinned is not None:
            artifact["image"] = pinned
        registration = VersionRegistration(
            code_digest=built.code_digest, provisioner=backend, artifact=artifact, functions=functions, dotenv=dotenv
        )
    except BaseException as exc:
        if built is not None:
            store.discard(built)  # nothing of a failed registration stays behind
        if isinstance(exc, InvalidTasksFolderError) and exc.details:
            try:
                exc.log_path = str(write_log(settings.home, folder, exc))
            except OSError:
                pass  # the error itself matters more than its log
        raise
    return await _record(client, settings, project_name, registration, store, built)


async def _in_thread(
    cancelled: threading.Event, call: Callable[[], T], *, undo: Callable[[T], None] | None = None
) -> T:
    """``call()`` in a thread. If the registration is interrupted meanwhile, set ``cancelled`` and wait for
    the thread to stop (it removes what it made), then undo what it returned if it finished anyway."""
    future = asyncio.ensure_future(asyncio.to_thread(call))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        cancelled.set()
        await asyncio.wait([future])
        finished = not future.cancelled() and future.exception() is None  # retrieved: BuildCancelled, say
        if undo is not None and finished:
            undo(future.result())
        raise


async def _record(
    client: Any,
    settings: MultinodeSettings,
    project_name: str,
    registration: VersionRegistration,
    store: LocalVersionStore,
    built: BuiltVersion,
) -> VersionRecord:
    """Record the version; its stored copy and environment stay unless the registry surely refused it.

    An interruption waits for the registry's answer (at most the worker wait): a version recorded
    without its code would fail every invocation."""
    recording = asyncio.ensure_future(register_version(client, settings, project_name, registration))
    interrupted: BaseException | None = None
    while not recording.done():
        try:
            await asyncio.wait([recording])
        except asyncio.CancelledError as exc:
            interrupted = exc
    failure = None if recording.cancelled() else recording.exception()
    refused = isinstance(failure, ValidationError) or (
        isinstance(failure, MultinodeError) and isinstance(failure.__cause__, WorkflowUpdateFailedError)
    )
    if refused:
        store.discard(built)
    else:
        store.keep(built)  # recorded, or perhaps recorded (a timeout): keep what it may run
    if interrupted is not None:
        raise interrupted
    return recording.result()
