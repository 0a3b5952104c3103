"""The build context of a version's container image (no Docker, no AWS here: just files)."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

from multinode.artifacts.local import IGNORED_NAMES, PACKAGE_DIR, code_digest, runtime_pins, tasks_files

DOCKERFILE = Path(__file__).with_name("Dockerfile")
"""The Dockerfile of every version image (also at deploy/Dockerfile.tasks in the repository)."""
ENV_FILE = ".env"
"""The tasks folder's variables file: never in the image (anyone who may pull it could read it); its
values reach the function's process at run time through the container's agent."""

_BASE_IMAGE_ARG = re.compile(r"^ARG PYTHON_IMAGE=(\S+)$", re.M)
_PYTHON_TAG = re.compile(r"^python:(\d+)\.(\d+)[.\-]")


def base_image() -> str:
    """The Dockerfile's default base image (``ARG PYTHON_IMAGE=...``)."""
    found = _BASE_IMAGE_ARG.search(DOCKERFILE.read_text())
    if found is None:
        raise RuntimeError(f"{DOCKERFILE} has no `ARG PYTHON_IMAGE=...` line")
    return found.group(1)


def image_python() -> tuple[int, int]:
    """Major and minor version of the Python the image runs (from its base image's tag)."""
    found = _PYTHON_TAG.match(base_image())
    if found is None:
        raise RuntimeError(f"{DOCKERFILE}: the base image {base_image()!r} is not python:X.Y...")
    return int(found.group(1)), int(found.group(2))


def write_build_context(tasks_dir: Path, out_dir: Path) -> str:
    """Write ``Dockerfile``, ``tasks/`` (without ``.env``), ``runtime/multinode/`` and
    ``runtime-requirements.txt`` into ``out_dir``; return a content digest of the context, usable as
    an image tag (a change to ``.env`` alone keeps the tag: the values are not in the image)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(DOCKERFILE, out_dir / "Dockerfile")
    tasks_out = out_dir / "tasks"
    for path in tasks_files(tasks_dir):
        relative = path.relative_to(tasks_dir)
        if relative == Path(ENV_FILE):
            continue
        target = tasks_out / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    tasks_out.mkdir(parents=True, exist_ok=True)
    (tasks_out / ENV_FILE).unlink(missing_ok=True)  # left by an earlier context written to the same folder
    (tasks_out / "requirements.txt").touch()  # the Dockerfile copies it even when the folder has none
    runtime = out_dir / "runtime" / "multinode"
    shutil.copytree(
        PACKAGE_DIR,
        runtime,
        ignore=shutil.ignore_patterns(*IGNORED_NAMES, "*.pyc"),
        dirs_exist_ok=True,
    )
    (out_dir / "runtime-requirements.txt").write_text("\n".join(runtime_pins()) + "\n")
    digest = hashlib.sha256()
    for part in (out_dir / "Dockerfile", out_dir / "runtime-requirements.txt"):
        digest.update(part.read_bytes())
    digest.update(code_digest(out_dir / "runtime").encode())
    digest.update(code_digest(tasks_out).encode())
    return digest.hexdigest()
