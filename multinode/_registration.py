"""``mn register``: check a tasks folder, store it as a version, record its functions in Temporal.

Its errors name the user's own files as the user named the folder (``tasks/main.py:12``), never the
stored copy that was imported; what lies behind a one-line error goes to a log in
``$MULTINODE_HOME/logs/``, whose path the error carries.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from multinode._client import get_client
from multinode._config import FunctionConfig
from multinode._protocol import FunctionRecord, Parameter, VersionRecord, VersionRegistration
from multinode._registry import check_control_plane, check_project_name, register_version
from multinode._settings import MultinodeSettings
from multinode.errors import ConfigurationError, InvalidTasksFolderError
from multinode.provisioner.local_build import SUMMARY_MAX_CHARS, BuiltVersion, LocalVersionStore, shown_paths

PROVISIONERS = ("local", "fargate")
"""Container backends a version can be registered for."""
IMPORT_CHECK_TIMEOUT_SECONDS = 300
"""Longest ``main.py`` may take to import at registration."""
KEPT_LOGS = 50
"""Registration logs kept in ``$MULTINODE_HOME/logs/``; older ones are removed."""


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


def inspect_version(built: BuiltVersion, shown: Path) -> dict[str, FunctionRecord]:
    """Import main.py in the version's own environment and read back its functions.

    ``shown`` is the tasks folder as the user named it, for the errors.
    """
    main_py = shown / "main.py"
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "functions.json"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
        try:
            done = subprocess.run(
                [str(built.python), "-m", "multinode._runtime.inspect", str(out)],
                cwd=built.code_dir,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=IMPORT_CHECK_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise InvalidTasksFolderError(
                f"Importing {main_py} took longer than {IMPORT_CHECK_TIMEOUT_SECONDS} s.", path=str(shown)
            ) from exc
        if not out.exists():
            output = shown_paths((done.stderr or done.stdout).strip(), built.code_dir, shown)
            raise InvalidTasksFolderError(
                f"Importing {main_py} stopped the interpreter (exit code {done.returncode}).",
                path=str(shown),
                file=str(main_py),
                details=output or None,
            )
        report = json.loads(out.read_text())
    if "error" in report:
        raise import_error(report["error"], built.code_dir, shown)
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
    ``fargate`` provisioner its image is also built and pushed with Docker, or ``image`` (built
    elsewhere from ``mn build-context``) is recorded as it is.
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
    client = await get_client(settings)
    await check_control_plane(client, settings)
    store = LocalVersionStore(settings.home)
    try:
        built = await asyncio.to_thread(store.build, folder, shown_as=path)
        functions = await asyncio.to_thread(inspect_version, built, path)
    except InvalidTasksFolderError as exc:
        if exc.details:
            try:
                exc.log_path = str(write_log(settings.home, folder, exc))
            except OSError:
                pass  # the error itself matters more than its log
        raise
    artifact = dict(built.artifact)
    if backend == "fargate":
        artifact["image"] = image if image is not None else await asyncio.to_thread(_build_image, folder, project_name)
    registration = VersionRegistration(
        code_digest=built.code_digest, provisioner=backend, artifact=artifact, functions=functions
    )
    return await register_version(client, settings, project_name, registration)


def _build_image(folder: Path, project_name: str) -> str:
    from multinode.provisioner.fargate_image import build_and_push

    repository = os.environ.get("MULTINODE_ECR_REPOSITORY")
    region = next(
        (os.environ[k] for k in ("MULTINODE_AWS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION") if os.environ.get(k)),
        None,
    )
    if not repository or not region:
        raise ConfigurationError(
            "Building an image for the fargate provisioner needs MULTINODE_ECR_REPOSITORY (the repository URI) and "
            "MULTINODE_AWS_REGION: take them from `terraform output` of deploy/terraform, or pass --image URI.",
            parameter="MULTINODE_ECR_REPOSITORY",
        )
    return build_and_push(folder, repository, region, project_name)
