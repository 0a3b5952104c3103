"""Building and pushing a version's image to ECR with the Docker CLI (boto3 only for the ECR login)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import tempfile
from pathlib import Path

from multinode.artifacts.image import write_build_context
from multinode.errors import ProvisionerError

DOCKER_TIMEOUT_SECONDS = 3600
"""Longest a docker build or push may take."""


def docker_available() -> str | None:
    """None if a Docker engine answers, else why not."""
    docker = shutil.which("docker")
    if docker is None:
        return "the docker CLI is not installed"
    done = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if done.returncode != 0:
        return "no Docker engine is running (`docker info` failed)"
    return None


def build_and_push(tasks_dir: Path, repository_uri: str, region: str, tag_prefix: str) -> str:
    """Build the image of ``tasks_dir`` and push it to ``repository_uri``; return the image URI."""
    problem = docker_available()
    if problem is not None:
        raise ProvisionerError(
            f"Cannot build the image for the fargate provisioner: {problem}. Build it elsewhere (e.g. in CI) "
            "from `mn build-context PATH --out DIR` with `docker build DIR`, push it, and register it with "
            "`mn register PATH --project NAME --image URI`."
        )
    with tempfile.TemporaryDirectory() as tmp:
        digest = write_build_context(tasks_dir, Path(tmp))
        image = f"{repository_uri}:{tag_prefix}-{digest[:16]}"
        _docker_login(repository_uri, region)
        _run(["docker", "build", "--platform", "linux/amd64", "-t", image, tmp], "docker build")
        _run(["docker", "push", image], "docker push")
    return image


def _docker_login(repository_uri: str, region: str) -> None:
    import boto3

    token = boto3.client("ecr", region_name=region).get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
    registry = repository_uri.split("/", 1)[0]
    done = subprocess.run(
        ["docker", "login", "--username", user, "--password-stdin", registry],
        input=password,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise ProvisionerError(f"docker login to {registry} failed: {done.stderr.strip()[-500:]}")


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, timeout=DOCKER_TIMEOUT_SECONDS)
    if done.returncode != 0:
        raise ProvisionerError(f"{what} failed: {(done.stderr or done.stdout).strip()[-1500:]}")
