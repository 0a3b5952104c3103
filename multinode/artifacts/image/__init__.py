"""The build context of a version's container image (no Docker, no AWS here: just files)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from multinode.artifacts.local import IGNORED_NAMES, PACKAGE_DIR, code_digest, runtime_pins, tasks_files

DOCKERFILE = Path(__file__).with_name("Dockerfile")
"""The Dockerfile of every version image (also at deploy/Dockerfile.tasks in the repository)."""


def write_build_context(tasks_dir: Path, out_dir: Path) -> str:
    """Write ``Dockerfile``, ``tasks/``, ``runtime/multinode/`` and ``runtime-requirements.txt`` into
    ``out_dir``; return a content digest of the context, usable as an image tag."""
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(DOCKERFILE, out_dir / "Dockerfile")
    tasks_out = out_dir / "tasks"
    for path in tasks_files(tasks_dir):
        target = tasks_out / path.relative_to(tasks_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
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
