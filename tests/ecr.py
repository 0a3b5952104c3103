"""Images in moto's ECR: what a ``docker push`` leaves there (a manifest under a tag), without Docker."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from botocore.exceptions import ClientError


def repository(ecr: Any, name: str | None = None, *, immutable: bool = False) -> str:
    """Create a repository (once); return its URI."""
    name = name or f"multinode-test-{uuid.uuid4().hex[:8]}"
    try:
        created = ecr.create_repository(repositoryName=name, imageTagMutability="IMMUTABLE" if immutable else "MUTABLE")
        return str(created["repository"]["repositoryUri"])
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "RepositoryAlreadyExistsException":
            raise
        return str(ecr.describe_repositories(repositoryNames=[name])["repositories"][0]["repositoryUri"])


def push(ecr: Any, repository_uri: str, tag: str) -> str:
    """Put an image (a manifest with one layer of its own) under ``tag``; return its digest."""
    layer = "sha256:" + hashlib.sha256(uuid.uuid4().bytes).hexdigest()
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {
            "mediaType": "application/vnd.docker.container.image.v1+json",
            "size": 7023,
            "digest": "sha256:" + hashlib.sha256(layer.encode()).hexdigest(),
        },
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": 32654, "digest": layer}],
    }
    name = repository_uri.split("/", 1)[1]
    put = ecr.put_image(repositoryName=name, imageManifest=json.dumps(manifest), imageTag=tag)
    return str(put["image"]["imageId"]["imageDigest"])
