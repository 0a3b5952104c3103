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

PROVISIONERS = ("local", "fargate")
"""Container backends a version can be registered for."""
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
    client = await get_client(settings)
    await check_control_plane(client, settings)
    store = LocalVersionStore(settings.home)
    built = await asyncio.to_thread(store.build, folder)
    functions = await asyncio.to_thread(inspect_version, built, folder)
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
