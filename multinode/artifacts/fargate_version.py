"""What registration adds for a fargate version: the Python its import check runs on (the image's), its
``.env`` (recorded in the registry and delivered at run time: never in the image), and its image,
pinned by digest (``fargate_image.py``)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from multinode._codec import ENV_ENCRYPTION_KEYS
from multinode._credentials import credential_free_env
from multinode._settings import MultinodeSettings
from multinode.artifacts.fargate_image import build_and_push, check_image
from multinode.artifacts.image import ENV_FILE, image_python
from multinode.artifacts.local import summarize_uv_error
from multinode.errors import ConfigurationError, InvalidTasksFolderError

MAX_DOTENV_BYTES = 64 * 1024
"""Largest ``.env`` a fargate version may have (it travels in Temporal payloads, each under 2 MB)."""
UV_FIND_TIMEOUT_SECONDS = 60
"""Longest ``uv python find`` may take."""


def import_check_python() -> Path | None:
    """The interpreter to check a fargate version with: None when this one has the image's major.minor
    version, else an installed one that has (found by uv, never downloaded); ConfigurationError if none."""
    major, minor = image_python()
    if sys.version_info[:2] == (major, minor):
        return None
    wanted = f"{major}.{minor}"
    from multinode.artifacts.local import _uv

    env = {**credential_free_env(os.environ), "UV_PYTHON_DOWNLOADS": "never"}
    try:
        done = subprocess.run(
            [_uv(), "python", "find", wanted],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=UV_FIND_TIMEOUT_SECONDS,
        )
        found, why = done.stdout.strip(), summarize_uv_error(done.stderr) if done.returncode else ""
    except (OSError, subprocess.TimeoutExpired) as exc:
        found, why = "", str(exc)
    if found and not why and Path(found).is_file():
        return Path(found)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    raise ConfigurationError(
        f"Fargate images run Python {wanted} and registration imports main.py on that version, but this is "
        f"Python {running} and uv finds no Python {wanted} here{f' ({why})' if why else ''}. Install one "
        f"(`uv python install {wanted}`), or run `mn register` from a Python {wanted} environment.",
        parameter="provisioner",
    )


def version_dotenv(folder: Path, shown: Path, settings: MultinodeSettings) -> str:
    """The ``.env`` text a fargate version delivers to its containers ('' if it sets nothing).

    It is recorded in the project's registry, so it sits in Temporal's history: encrypted with
    ``MULTINODE_ENCRYPTION_KEYS``, else in plain text, with a warning (as every payload is without keys).
    """
    from dotenv import dotenv_values

    env_file = folder / ENV_FILE
    if not env_file.is_file():
        return ""
    name = shown / ENV_FILE
    text = env_file.read_text(encoding="utf-8")  # check_env_file has read it already
    if len(text.encode()) > MAX_DOTENV_BYTES:
        raise InvalidTasksFolderError(
            f"{name} is {len(text.encode()):,} bytes, over the {MAX_DOTENV_BYTES:,} a fargate version may have: "
            "keep large values in files of the tasks folder, or in AWS Secrets Manager read by the function.",
            path=str(shown),
            file=str(name),
        )
    if all(value is None for value in dotenv_values(stream=io.StringIO(text), interpolate=False).values()):
        return ""  # comments, blank lines and bare names set nothing
    if not settings.encryption_keys.get_secret_value():
        # Without keys every payload (arguments, results) is plain in Temporal already; refusing would
        # break the user guide's .env on Fargate. Say where the values are, and how to encrypt them.
        print(
            f"[multinode] warning: {name} sets variables. A fargate version's .env is not put in its image "
            "(anyone who may pull the image could read it): it is recorded with the version in the project's "
            f"registry in Temporal, in plain text because {ENV_ENCRYPTION_KEYS} is not set. Whoever can read "
            "this namespace's workflow history can read the values; set the keys (`mn encryption-key`) to "
            "encrypt them.",
            file=sys.stderr,
        )
    return text


def version_image(folder: Path, project_name: str, image: str | None) -> str:
    """The version's image pinned by digest: ``image`` (built elsewhere) once it is known to exist, or the
    image of ``folder`` in MULTINODE_ECR_REPOSITORY, reused if it is there, else built and pushed."""
    if image is not None:
        return check_image(image)
    from multinode.provisioner.fargate_settings import image_repository_from_env

    repository, _ = image_repository_from_env()
    if not repository:
        raise ConfigurationError(
            "Building an image for the fargate provisioner needs MULTINODE_ECR_REPOSITORY (the repository URI): "
            "take it from `terraform output` of deploy/terraform, or pass --image URI.",
            parameter="MULTINODE_ECR_REPOSITORY",
        )
    return build_and_push(folder, repository, project_name)
