"""``mn register``: check a tasks folder, store it as a version, record its functions in Temporal."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import tempfile
from pathlib import Path

from multinode._client import get_client
from multinode._config import FunctionConfig
from multinode._protocol import FunctionRecord, Parameter, VersionRecord, VersionRegistration
from multinode._registry import check_control_plane, check_project_name, register_version
from multinode._settings import MultinodeSettings
from multinode.errors import ConfigurationError, InvalidTasksFolderError
from multinode.provisioner.local_build import BuiltVersion, LocalVersionStore

IMPORT_CHECK_TIMEOUT_SECONDS = 300
"""Longest ``main.py`` may take to import at registration."""


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


def inspect_version(built: BuiltVersion, folder: Path) -> dict[str, FunctionRecord]:
    """Import main.py in the version's own environment and read back its functions."""
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
                f"Importing {folder}/main.py took longer than {IMPORT_CHECK_TIMEOUT_SECONDS} s.", path=str(folder)
            ) from exc
        if not out.exists():
            raise InvalidTasksFolderError(
                f"Importing {folder}/main.py stopped the interpreter (exit code {done.returncode}).",
                path=str(folder),
                details=(done.stderr or done.stdout)[-2000:],
            )
        report = json.loads(out.read_text())
    if "error" in report:
        error = report["error"]
        raise InvalidTasksFolderError(
            f"Importing {folder}/main.py failed with {error['type']}: {error['message']}",
            path=str(folder),
            details=error["traceback"].rstrip(),
        )
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
            f"{folder}/main.py declares no function: decorate at least one with @mn.function().", path=str(folder)
        )
    return functions


async def register_async(path: Path, project_name: str, settings: MultinodeSettings) -> VersionRecord:
    check_project_name(project_name)
    folder = check_tasks_folder(path)
    if settings.provisioner != "local":
        raise ConfigurationError(
            f"Registering for the {settings.provisioner!r} provisioner is not available; use 'local'.",
            parameter="provisioner",
        )
    client = await get_client(settings)
    await check_control_plane(client, settings)
    store = LocalVersionStore(settings.home)
    built = await asyncio.to_thread(store.build, folder)
    functions = await asyncio.to_thread(inspect_version, built, folder)
    registration = VersionRegistration(
        code_digest=built.code_digest, provisioner=settings.provisioner, artifact=built.artifact, functions=functions
    )
    return await register_version(client, settings, project_name, registration)
