"""Images for the fargate provisioner: the build context, and registration without a Docker engine."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from multinode import InvocationStatus, get_deployed_function
from multinode.artifacts.fargate_image import docker_available
from multinode.artifacts.image import write_build_context
from multinode.errors import ConfigurationError, InvocationFailedError, ProvisionerError
from tests.helpers import write_tasks

TASKS = {
    "main.py": "from multinode import Multinode\nmn = Multinode()\n\n@mn.function()\ndef one():\n    return 1\n",
    "helpers/__init__.py": "",
    ".env": "TOKEN=abc\n",
    "__pycache__/junk.pyc": "x",
}


def test_build_context_contents(tmp_path: Path) -> None:
    folder = write_tasks(tmp_path / "tasks", TASKS)
    out = tmp_path / "context"
    tag = write_build_context(folder, out)
    assert len(tag) == 64 and tag == write_build_context(folder, tmp_path / "again")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "Dockerfile" in files and "runtime-requirements.txt" in files
    assert {"tasks/main.py", "tasks/.env", "tasks/requirements.txt", "tasks/helpers/__init__.py"} <= set(files)
    assert "runtime/multinode/__init__.py" in files and "runtime/multinode/_runtime/container.py" in files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert "temporalio==" in (out / "runtime-requirements.txt").read_text()
    dockerfile = (out / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in dockerfile
    assert "USER multinode" in dockerfile
    assert 'CMD ["python", "-m", "multinode._runtime.container"]' in dockerfile
    repo_dockerfile = Path(__file__).parents[1] / "deploy" / "Dockerfile.tasks"
    assert repo_dockerfile.read_text() == dockerfile


def test_build_context_cli(tmp_path: Path) -> None:
    folder = write_tasks(tmp_path / "tasks", TASKS)
    mn = str(Path(sys.executable).parent / "mn")
    done = subprocess.run(
        [mn, "build-context", str(folder), "--out", str(tmp_path / "ctx")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) == 16 and (tmp_path / "ctx" / "Dockerfile").exists()


@pytest.mark.skipif(docker_available() is None, reason="a Docker engine is running here; this checks its absence")
def test_register_for_fargate_without_docker_names_the_alternative(register, monkeypatch: pytest.MonkeyPatch) -> None:
    from multinode.control_plane.registration import register_async  # noqa: F401 - the fixture uses it

    monkeypatch.setenv("MULTINODE_ECR_REPOSITORY", "123456789012.dkr.ecr.us-east-1.amazonaws.com/multinode")
    monkeypatch.setenv("MULTINODE_AWS_REGION", "us-east-1")
    with pytest.raises(ProvisionerError, match=r"no Docker engine.*--image URI"):
        register_fargate(register, TASKS)


def test_register_for_fargate_without_a_repository(register, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MULTINODE_ECR_REPOSITORY", raising=False)
    with pytest.raises(ConfigurationError, match="MULTINODE_ECR_REPOSITORY"):
        register_fargate(register, TASKS)


def register_fargate(register, tasks: dict[str, str], image: str | None = None):  # noqa: ANN001, ANN201
    import asyncio
    import uuid

    from multinode._settings import MultinodeSettings
    from multinode.control_plane.registration import register_async

    folder = write_tasks(Path(os.environ["MULTINODE_HOME"]).parent / f"t-{uuid.uuid4().hex[:6]}", tasks)
    register(TASKS)  # the project exists and a worker polls
    project = f"fargate-{uuid.uuid4().hex[:6]}"
    return project, asyncio.run(
        register_async(folder, project, MultinodeSettings.from_env(), provisioner="fargate", image=image)
    )


def test_register_with_an_image_built_elsewhere(register) -> None:
    image = "123456789012.dkr.ecr.us-east-1.amazonaws.com/multinode:demo-0123456789abcdef"
    project, record = register_fargate(register, TASKS, image=image)
    assert record.provisioner == "fargate" and record.artifact["image"] == image
    mn = str(Path(sys.executable).parent / "mn")
    described = json.loads(subprocess.run([mn, "describe", project, "--json"], capture_output=True, text=True).stdout)
    assert described["versions"][0]["artifact"]["image"] == image
    # This test's control-plane worker runs the local provisioner only: the invocation fails clearly.
    fn = get_deployed_function(project, "one")
    invocation_id = fn.start()
    with pytest.raises(InvocationFailedError, match="no 'fargate' provisioner"):
        fn.await_result(invocation_id, timeout=60)
    assert fn.get(invocation_id).status == InvocationStatus.FAILED
