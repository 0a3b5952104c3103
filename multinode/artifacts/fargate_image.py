"""A fargate version's image, recorded pinned by digest (``REPOSITORY@sha256:...``).

Registration either builds the image and pushes it to ECR with the Docker CLI, or checks that an image
built elsewhere (``--image``) exists. Either way the version records the image's digest, not a tag: a
tag can be moved, and a version must run the same image for as long as it exists.

The tag of a built image is a digest of its build context (``PROJECT-DIGEST16``), so an image that ECR
already holds under that tag is the same build: it is reused (no build, no push). That keeps an old
version's image and its re-registration identical, and works with IMMUTABLE repositories.

ECR is asked through boto3 (DescribeImages), so everything but the build and push itself runs without
a Docker engine; those two go through ``publish``, which tests replace.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from multinode.artifacts.image import write_build_context
from multinode.errors import ConfigurationError, ProvisionerError
from multinode.provisioner._fargate_aws import error_code

DOCKER_TIMEOUT_SECONDS = 3600
"""Longest a docker build or push may take."""
INSPECT_TIMEOUT_SECONDS = 120
"""Longest the Docker CLI may take to read an image's manifest from a registry other than ECR."""
DIGEST_WAIT_SECONDS = 30.0
"""How long after a push registration waits for ECR to list the pushed tag."""

Publish = Callable[[Path, str], None]
"""Builds the context folder into the image reference given and pushes it."""

_ECR_HOST = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


@dataclass(frozen=True)
class ImageRef:
    """An image reference split into its parts: ``REGISTRY/REPOSITORY[:TAG][@DIGEST]``."""

    registry: str
    """Host (and port) of the registry; empty for Docker Hub's short names (``python:3.11``)."""
    repository: str
    tag: str | None = None
    digest: str | None = None

    @property
    def name(self) -> str:
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    def pinned(self, digest: str) -> str:
        return f"{self.name}@{digest}"

    def ecr(self) -> tuple[str, str] | None:
        """``(account, region)`` of an ECR repository; None for any other registry."""
        found = _ECR_HOST.match(self.registry)
        return (found["account"], found["region"]) if found else None

    def __str__(self) -> str:
        return self.name + (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")


def parse_image(uri: str, *, what: str = "--image") -> ImageRef:
    """``uri`` split into its parts; ConfigurationError if it is not an image reference."""
    rest, _, digest = uri.partition("@")
    slash = rest.rfind("/")
    tag = None
    if ":" in rest[slash + 1 :]:
        rest, tag = rest.rsplit(":", 1)
    first, _, remainder = rest.partition("/")
    registry, repository = (
        (first, remainder) if remainder and ("." in first or ":" in first or first == "localhost") else ("", rest)
    )
    if (
        not _NAME.match(repository)
        or (tag is not None and not _TAG.match(tag))
        or (digest and not _DIGEST.match(digest))
        or ("@" in uri and not digest)
    ):
        raise ConfigurationError(
            f"{what} {uri!r} is not an image reference: write REGISTRY/REPOSITORY:TAG or "
            "REGISTRY/REPOSITORY@sha256:DIGEST (for ECR, ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG).",
            parameter="image" if what == "--image" else what,
        )
    return ImageRef(registry, repository, tag, digest or None)


def ecr_client(region: str) -> Any:
    import boto3
    from botocore.config import Config

    config = Config(retries={"mode": "standard", "max_attempts": 5}, user_agent_extra="multinode")
    return boto3.session.Session(region_name=region).client("ecr", config=config)


def ecr_digest(ecr: Any, ref: ImageRef) -> str | None:
    """The digest ECR holds for ``ref`` (by its digest, else its tag); None if it has no such image."""
    from botocore.exceptions import BotoCoreError, ClientError

    location = ref.ecr()
    assert location is not None, ref
    account, region = location
    image_id = {"imageDigest": ref.digest} if ref.digest else {"imageTag": ref.tag or "latest"}
    try:
        found = ecr.describe_images(registryId=account, repositoryName=ref.repository, imageIds=[image_id])
    except ClientError as exc:
        code = error_code(exc)
        if code == "ImageNotFoundException":
            return None
        if code == "RepositoryNotFoundException":
            raise ConfigurationError(
                f"ECR has no repository {ref.repository!r} in account {account}, region {region}: create it "
                "(deploy/terraform does) or correct MULTINODE_ECR_REPOSITORY / the --image URI.",
                parameter="image",
            ) from exc
        raise ProvisionerError(
            f"Reading image {ref} from ECR failed ({code or exc}); registration needs ecr:DescribeImages on the "
            "repository (`terraform output -raw register_policy_arn`)."
        ) from exc
    except BotoCoreError as exc:
        raise ProvisionerError(f"Reading image {ref} from ECR failed: {exc}") from exc
    details = found.get("imageDetails") or []
    return str(details[0]["imageDigest"]) if details else None


def check_image(uri: str, *, ecr: Any = None) -> str:
    """The digest-pinned form of ``uri`` (an image built elsewhere), once it is known to exist."""
    ref = parse_image(uri)
    location = ref.ecr()
    if location is None:
        return ref.pinned(_inspect_digest(ref))
    digest = ecr_digest(ecr or ecr_client(location[1]), ref)
    if digest is None:
        raise ConfigurationError(
            f"Image {ref} is not in ECR. Build and push it first: `mn build-context PATH --out DIR`, "
            f"`docker build --platform linux/amd64 -t {ref} DIR`, `docker push {ref}`; then register again.",
            parameter="image",
        )
    return ref.pinned(digest)


def build_and_push(
    tasks_dir: Path, repository_uri: str, tag_prefix: str, *, ecr: Any = None, publish: Publish | None = None
) -> str:
    """The digest-pinned image of ``tasks_dir`` in ``repository_uri``: reused if ECR holds its tag, else
    built and pushed (by ``publish``, Docker by default)."""
    repository = parse_image(repository_uri, what="MULTINODE_ECR_REPOSITORY")
    location = repository.ecr()
    if location is None or repository.tag or repository.digest:
        raise ConfigurationError(
            f"MULTINODE_ECR_REPOSITORY {repository_uri!r} is not an ECR repository URI: write "
            "ACCOUNT.dkr.ecr.REGION.amazonaws.com/NAME, without a tag (`terraform output -raw ecr_repository`).",
            parameter="MULTINODE_ECR_REPOSITORY",
        )
    ecr = ecr or ecr_client(location[1])
    with tempfile.TemporaryDirectory() as tmp:
        content = write_build_context(tasks_dir, Path(tmp))
        image = ImageRef(repository.registry, repository.repository, f"{tag_prefix}-{content[:16]}")
        existing = ecr_digest(ecr, image)
        if existing is not None:
            return image.pinned(existing)  # the same build context: the image is already there
        (publish or docker_publish)(Path(tmp), str(image))
    return image.pinned(_pushed_digest(ecr, image))


def _pushed_digest(ecr: Any, image: ImageRef) -> str:
    deadline = time.monotonic() + DIGEST_WAIT_SECONDS
    pause = 0.5
    while (digest := ecr_digest(ecr, image)) is None:
        if time.monotonic() > deadline:
            raise ProvisionerError(f"{image} was pushed, but ECR did not list it within {DIGEST_WAIT_SECONDS:g} s.")
        time.sleep(pause)
        pause = min(pause * 2, 5.0)
    return digest


def docker_available() -> str | None:
    """None if a Docker engine answers, else why not."""
    docker = shutil.which("docker")
    if docker is None:
        return "the docker CLI is not installed"
    done = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True)
    if done.returncode != 0:
        return "no Docker engine is running (`docker info` failed)"
    return None


def docker_publish(context: Path, image: str) -> None:
    """``docker build`` the context as ``image`` (an ECR reference) and ``docker push`` it."""
    problem = docker_available()
    if problem is not None:
        raise ProvisionerError(
            f"Cannot build the image for the fargate provisioner: {problem}. Build it elsewhere (e.g. in CI) "
            "from `mn build-context PATH --out DIR` with `docker build DIR`, push it, and register it with "
            "`mn register PATH --project NAME --image URI`."
        )
    ref = parse_image(image)
    location = ref.ecr()
    assert location is not None, image
    _docker_login(ref.registry, location[1])
    _run(["docker", "build", "--platform", "linux/amd64", "-t", image, str(context)], "docker build")
    _run(["docker", "push", image], "docker push")


def _docker_login(registry: str, region: str) -> None:
    token = ecr_client(region).get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(token["authorizationToken"]).decode().split(":", 1)
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


def _inspect_digest(ref: ImageRef) -> str:
    """The digest of an image in a registry other than ECR, read with the Docker CLI (no engine needed)."""
    docker = shutil.which("docker")
    problems = ["the docker CLI is not installed"] if docker is None else []
    if docker is not None:
        # buildx answers with the descriptor of what the reference names (an index, or one manifest);
        # `docker manifest inspect -v` with one descriptor per platform (a list) or the one manifest's.
        for command in (
            [docker, "buildx", "imagetools", "inspect", "--format", "{{json .Manifest}}", str(ref)],
            [docker, "manifest", "inspect", "-v", str(ref)],
        ):
            answer, problem = _inspect(command)
            digest = _amd64_digest(answer)
            if digest is not None:
                return digest
            problems.append(f"`{' '.join(command[1:3])}`: {problem or 'no linux/amd64 image'}")
    raise ConfigurationError(
        f"Cannot check that image {ref} exists ({'; '.join(problems)}). Push it to the ECR repository of the "
        "deployment (MULTINODE_ECR_REPOSITORY) and register that URI, or register from a machine whose docker "
        f"CLI can read {ref.registry or 'Docker Hub'} (`docker login` there first). If it does not exist yet, "
        "build it from `mn build-context` and push it.",
        parameter="image",
    )


def _inspect(command: list[str]) -> tuple[Any, str]:
    """The JSON the command printed (None if it failed), and why it failed."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=INSPECT_TIMEOUT_SECONDS)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, str(exc)
    if done.returncode != 0:
        return None, " ".join((done.stderr or done.stdout).split())[-300:]
    try:
        return json.loads(done.stdout), ""
    except ValueError:
        return None, "it printed no JSON"


def _amd64_digest(answer: Any) -> str | None:
    entries = answer if isinstance(answer, list) else [answer]
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        descriptor = entry.get("Descriptor", entry)  # manifest inspect -v wraps it; buildx does not
        platform = descriptor.get("platform") or {}
        digest = descriptor.get("digest")
        linux_amd64 = platform.get("os", "linux") == "linux" and platform.get("architecture", "amd64") == "amd64"
        if isinstance(digest, str) and _DIGEST.match(digest) and linux_amd64:
            return digest
    return None
