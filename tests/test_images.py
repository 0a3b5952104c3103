"""Images for the fargate provisioner: the build context, versions pinned by digest against moto's ECR,
``--image`` checked, reuse of an image ECR already holds, and Docker's absence.

Docker cannot run here: the build and push go through ``publish``, which these tests replace with what
``docker push`` leaves in ECR (a manifest under a tag, ``tests/ecr.py``); the Docker part itself is
tested for its error when no engine answers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from multinode import InvocationStatus, get_deployed_function
from multinode._protocol import VersionRecord
from multinode._settings import MultinodeSettings
from multinode.artifacts.fargate_image import ImageRef, build_and_push, docker_available, docker_publish, parse_image
from multinode.artifacts.image import base_image, image_python, write_build_context
from multinode.errors import ConfigurationError, InvalidTasksFolderError, InvocationFailedError, ProvisionerError
from tests import ecr
from tests.aws import REAL_AWS, AwsTarget, fixture_aws_env, fixture_aws_target  # noqa: F401 - fixtures
from tests.helpers import write_tasks

pytestmark = pytest.mark.skipif(REAL_AWS, reason="ECR here is moto's")

MAIN = "from multinode import Multinode\nmn = Multinode()\n\n@mn.function()\ndef one():\n    return 1\n"
TASKS = {"main.py": MAIN, "helpers/__init__.py": "", "__pycache__/junk.pyc": "x"}
WITH_ENV = {**TASKS, ".env": "TOKEN=abc\n"}


def test_build_context_contents(tmp_path: Path) -> None:
    folder = write_tasks(tmp_path / "tasks", {**WITH_ENV, "sub/.env": "kept=1\n"})
    out = tmp_path / "context"
    tag = write_build_context(folder, out)
    assert len(tag) == 64 and tag == write_build_context(folder, tmp_path / "again")
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert "Dockerfile" in files and "runtime-requirements.txt" in files
    assert {"tasks/main.py", "tasks/requirements.txt", "tasks/helpers/__init__.py", "tasks/sub/.env"} <= set(files)
    assert "tasks/.env" not in files  # its values reach the container at run time, not through the image
    assert "runtime/multinode/__init__.py" in files and "runtime/multinode/_runtime/container.py" in files
    assert not [f for f in files if "__pycache__" in f or f.endswith(".pyc")]
    assert "temporalio==" in (out / "runtime-requirements.txt").read_text()
    dockerfile = (out / "Dockerfile").read_text()
    assert "ARG PYTHON_IMAGE=python:3.11." in dockerfile and "FROM ${PYTHON_IMAGE}\n" in dockerfile
    assert "USER multinode" in dockerfile
    assert 'CMD ["python", "-m", "multinode._runtime.container"]' in dockerfile
    repo_dockerfile = Path(__file__).parents[1] / "deploy" / "Dockerfile.tasks"
    assert repo_dockerfile.read_text() == dockerfile
    # A changed .env alone keeps the image (the same content tag); anything else changes it.
    (folder / ".env").write_text("TOKEN=changed\n")
    assert write_build_context(folder, tmp_path / "env-changed") == tag
    (folder / "main.py").write_text(MAIN + "# changed\n")
    assert write_build_context(folder, tmp_path / "code-changed") != tag


def test_base_image_is_pinned_to_a_patch_release() -> None:
    image = base_image()
    assert image.startswith("python:3.11.") and image.endswith("-slim-bookworm"), image
    assert image_python() == (3, 11)


def test_a_context_written_over_an_old_one_has_no_env(tmp_path: Path) -> None:
    out = tmp_path / "ctx"
    (out / "tasks").mkdir(parents=True)
    (out / "tasks" / ".env").write_text("OLD=secret\n")  # as an older `mn build-context` left it
    write_build_context(write_tasks(tmp_path / "tasks", WITH_ENV), out)
    assert not (out / "tasks" / ".env").exists()


def test_build_context_cli(tmp_path: Path) -> None:
    folder = write_tasks(tmp_path / "tasks", WITH_ENV)
    mn = str(Path(sys.executable).parent / "mn")
    done = subprocess.run(
        [mn, "build-context", str(folder), "--out", str(tmp_path / "ctx")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.strip()) == 16 and (tmp_path / "ctx" / "Dockerfile").exists()
    assert not (tmp_path / "ctx" / "tasks" / ".env").exists()


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/multinode/functions:p-0123", ("multinode/functions", "p-0123")),
        ("123456789012.dkr.ecr.eu-west-1.amazonaws.com/fn@sha256:" + "a" * 64, ("fn", None)),
        ("ghcr.io/acme/tasks:1.2", ("acme/tasks", "1.2")),
        ("localhost:5000/tasks", ("tasks", None)),
        ("python:3.11", ("python", "3.11")),
    ],
)
def test_image_references(uri: str, expected: tuple[str, str | None]) -> None:
    ref = parse_image(uri)
    assert (ref.repository, ref.tag) == expected and str(ref) == uri


def test_ecr_references_name_their_account_and_region() -> None:
    ref = parse_image("123456789012.dkr.ecr.eu-west-1.amazonaws.com/multinode/functions:p-0123")
    assert ref.ecr() == ("123456789012", "eu-west-1")
    assert (
        ref.pinned("sha256:" + "b" * 64)
        == "123456789012.dkr.ecr.eu-west-1.amazonaws.com/multinode/functions@sha256:" + "b" * 64
    )
    assert ImageRef("ghcr.io", "acme/tasks", "1").ecr() is None


@pytest.mark.parametrize("uri", ["UPPER/case:1", "repo:bad tag", "repo@sha256:short", "repo@", "a//b:1"])
def test_malformed_image_references_are_refused(uri: str) -> None:
    with pytest.raises(ConfigurationError, match="is not an image reference"):
        parse_image(uri)


# --- against moto's ECR -----------------------------------------------------------------------------


@pytest.fixture
def ecr_client(aws_env: AwsTarget) -> Any:
    return boto3.client("ecr", region_name=aws_env.region)


def never_publish(context: Path, image: str) -> None:
    raise AssertionError(f"{image} was built and pushed although ECR holds it")


@pytest.mark.parametrize("immutable", [False, True])
def test_an_image_ecr_holds_is_reused_by_its_digest(ecr_client: Any, tmp_path: Path, immutable: bool) -> None:
    folder = write_tasks(tmp_path / "tasks", WITH_ENV)
    repository = ecr.repository(ecr_client, immutable=immutable)
    tag = "demo-" + write_build_context(folder, tmp_path / "ctx")[:16]
    digest = ecr.push(ecr_client, repository, tag)
    assert build_and_push(folder, repository, "demo", publish=never_publish) == f"{repository}@{digest}"


def test_a_new_image_is_pushed_then_pinned_by_its_digest(ecr_client: Any, tmp_path: Path) -> None:
    folder = write_tasks(tmp_path / "tasks", WITH_ENV)
    repository = ecr.repository(ecr_client)
    pushed: dict[str, str] = {}

    def publish(context: Path, image: str) -> None:  # what docker build + docker push leave in ECR
        assert (context / "Dockerfile").is_file() and (context / "tasks" / "main.py").is_file()
        assert not (context / "tasks" / ".env").exists()
        name, tag = image.rsplit(":", 1)
        pushed[image] = ecr.push(ecr_client, name, tag)

    pinned = build_and_push(folder, repository, "demo", publish=publish)
    ((image, digest),) = pushed.items()
    assert image.startswith(f"{repository}:demo-") and pinned == f"{repository}@{digest}"
    # Registering the same folder again reuses that image: no build, no push, the same digest.
    assert build_and_push(folder, repository, "demo", publish=never_publish) == pinned


def test_a_repository_that_is_not_ecr_or_does_not_exist(ecr_client: Any, tmp_path: Path) -> None:
    folder = write_tasks(tmp_path / "tasks", TASKS)
    with pytest.raises(ConfigurationError, match="is not an ECR repository URI"):
        build_and_push(folder, "ghcr.io/acme/tasks", "demo", publish=never_publish)
    missing = "123456789012.dkr.ecr.us-east-1.amazonaws.com/no-such-repository"
    with pytest.raises(ConfigurationError, match="ECR has no repository 'no-such-repository'"):
        build_and_push(folder, missing, "demo", publish=never_publish)


@pytest.mark.skipif(docker_available() is None, reason="a Docker engine is running here; this checks its absence")
def test_publishing_without_a_docker_engine_names_the_alternative(tmp_path: Path) -> None:
    with pytest.raises(ProvisionerError, match=r"no Docker engine.*mn build-context.*--image URI"):
        docker_publish(tmp_path, "123456789012.dkr.ecr.us-east-1.amazonaws.com/multinode:demo-0123")


# --- registration -----------------------------------------------------------------------------------


def register_fargate(register, tasks: dict[str, str], image: str | None = None) -> tuple[str, VersionRecord]:  # noqa: ANN001
    folder = write_tasks(Path(os.environ["MULTINODE_HOME"]).parent / f"t-{uuid.uuid4().hex[:6]}", tasks)
    register(TASKS)  # the project exists and a worker polls
    project = f"fargate-{uuid.uuid4().hex[:6]}"
    settings = MultinodeSettings.from_env()
    return project, asyncio.run(_register(folder, project, settings, image))


async def _register(folder: Path, project: str, settings: MultinodeSettings, image: str | None) -> VersionRecord:
    from multinode.control_plane.registration import register_async

    return await register_async(folder, project, settings, provisioner="fargate", image=image)


@pytest.mark.skipif(docker_available() is None, reason="a Docker engine is running here; this checks its absence")
def test_register_for_fargate_without_docker_names_the_alternative(
    register, ecr_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MULTINODE_ECR_REPOSITORY", ecr.repository(ecr_client))
    with pytest.raises(ProvisionerError, match=r"no Docker engine.*--image URI"):
        register_fargate(register, TASKS)


def test_register_for_fargate_without_a_repository(register, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MULTINODE_ECR_REPOSITORY", raising=False)
    with pytest.raises(ConfigurationError, match="MULTINODE_ECR_REPOSITORY"):
        register_fargate(register, TASKS)


def test_register_reuses_the_image_ecr_holds_without_docker(
    register, ecr_client: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    repository = ecr.repository(ecr_client, immutable=True)
    monkeypatch.setenv("MULTINODE_ECR_REPOSITORY", repository)
    folder = write_tasks(tmp_path / "same", TASKS)
    project = f"fargate-{uuid.uuid4().hex[:6]}"
    digest = ecr.push(ecr_client, repository, f"{project}-{write_build_context(folder, tmp_path / 'ctx')[:16]}")
    register(TASKS)
    settings = MultinodeSettings.from_env()
    first = asyncio.run(_register(folder, project, settings, None))
    again = asyncio.run(_register(folder, project, settings, None))  # an IMMUTABLE repository: no push again
    assert first.artifact["image"] == again.artifact["image"] == f"{repository}@{digest}"
    assert (first.version_id, again.version_id) == ("v1", "v2")


def test_register_with_an_image_built_elsewhere(register, ecr_client: Any) -> None:
    repository = ecr.repository(ecr_client)
    digest = ecr.push(ecr_client, repository, "demo-0123456789abcdef")
    project, record = register_fargate(register, TASKS, image=f"{repository}:demo-0123456789abcdef")
    assert record.provisioner == "fargate" and record.artifact["image"] == f"{repository}@{digest}"
    mn = str(Path(sys.executable).parent / "mn")
    described = json.loads(subprocess.run([mn, "describe", project, "--json"], capture_output=True, text=True).stdout)
    assert described["versions"][0]["artifact"]["image"] == f"{repository}@{digest}"
    # By digest too; the tag may move afterwards, the version keeps its image.
    _, by_digest = register_fargate(register, TASKS, image=f"{repository}@{digest}")
    assert by_digest.artifact["image"] == f"{repository}@{digest}"
    # This test's control-plane worker runs the local provisioner only: the invocation fails clearly.
    fn = get_deployed_function(project, "one")
    invocation_id = fn.start()
    with pytest.raises(InvocationFailedError, match="no 'fargate' provisioner"):
        fn.await_result(invocation_id, timeout=60)
    assert fn.get(invocation_id).status == InvocationStatus.FAILED


@pytest.mark.parametrize("suffix", [":never-pushed", "@sha256:" + "c" * 64])
def test_register_with_a_missing_image_says_how_to_push_it(register, ecr_client: Any, suffix: str) -> None:
    image = ecr.repository(ecr_client) + suffix
    with pytest.raises(ConfigurationError, match=r"Image .* is not in ECR.*docker push") as caught:
        register_fargate(register, TASKS, image=image)
    assert image in str(caught.value)
    with pytest.raises(ConfigurationError, match="ECR has no repository"):
        register_fargate(register, TASKS, image="123456789012.dkr.ecr.us-east-1.amazonaws.com/none:1")


def test_register_with_an_image_docker_cannot_check(register) -> None:
    with pytest.raises(ConfigurationError, match=r"Cannot check that image ghcr.io/acme/tasks:1 exists.*ECR"):
        register_fargate(register, TASKS, image="ghcr.io/acme/tasks:1")


# --- the image's Python, and .env -------------------------------------------------------------------


def test_a_python_other_than_the_images_that_cannot_be_found_is_refused(
    register, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("multinode.artifacts.fargate_version.image_python", lambda: (3, 99))
    with pytest.raises(
        ConfigurationError, match=r"run Python 3\.99.*`uv python install 3\.99`.*Python 3\.99 environment"
    ):
        register_fargate(register, TASKS, image="ghcr.io/acme/tasks:1")


PYTHON_312 = Path("/root/.pyenv/versions/3.12.1/bin")
CHECKS_ITS_PYTHON = {
    "main.py": "import sys\nassert sys.version_info[:2] == (3, 12), sys.version\n" + MAIN,
}


@pytest.mark.skipif(not (PYTHON_312 / "python3.12").exists(), reason="needs a Python 3.12 besides this one")
@pytest.mark.timeout(300)
def test_the_import_check_runs_on_the_images_python(register, ecr_client: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("multinode.artifacts.fargate_version.image_python", lambda: (3, 12))
    monkeypatch.setenv("PATH", f"{PYTHON_312}:{os.environ['PATH']}")  # where uv finds it
    repository = ecr.repository(ecr_client)
    ecr.push(ecr_client, repository, "py312")
    _, record = register_fargate(register, CHECKS_ITS_PYTHON, image=f"{repository}:py312")
    python = Path(os.environ["MULTINODE_HOME"]) / "envs" / record.artifact["env_key"] / "bin" / "python"
    done = subprocess.run([python, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True, text=True)
    assert done.stdout.strip() == "(3, 12)"
    # The local provisioner keeps this interpreter's Python.
    with pytest.raises(InvalidTasksFolderError, match=r"AssertionError: 3\.11"):
        register(CHECKS_ITS_PYTHON)


def test_a_fargate_env_file_without_encryption_is_stored_with_a_warning(
    register, ecr_client: Any, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MULTINODE_ENCRYPTION_KEYS", raising=False)
    repository = ecr.repository(ecr_client)
    ecr.push(ecr_client, repository, "env")
    register_fargate(register, WITH_ENV, image=f"{repository}:env")
    assert re.search(
        r"\.env sets variables.*in plain text.*MULTINODE_ENCRYPTION_KEYS.*mn encryption-key", capfd.readouterr().err
    )
    # Comments and bare names set nothing: no warning; a local version loads its stored file as before.
    _, record = register_fargate(register, {**TASKS, ".env": "# nothing yet\nNAME_ONLY\n"}, image=f"{repository}:env")
    assert record.version_id.startswith("v") and "sets variables" not in capfd.readouterr().err
    assert register(WITH_ENV).provisioner == "local"


def test_a_fargate_env_file_has_a_size_limit(register) -> None:
    with pytest.raises(InvalidTasksFolderError, match=r"\.env is 70,\d{3} bytes, over the 65,536"):
        register_fargate(register, {**TASKS, ".env": "BIG=" + "x" * 70_000 + "\n"}, image="ghcr.io/acme/tasks:1")


def test_the_registry_carries_env_texts_into_its_next_run(
    settings: MultinodeSettings, worker, project_name: str
) -> None:  # noqa: ANN001
    """A run continued as new gets the ``.env`` texts in its input (a ``RegistryState``); its memo, its
    describe query and its listing never show them."""
    from temporalio.client import Client

    from multinode._client import get_client
    from multinode._protocol import (
        DESCRIBE_QUERY,
        PROJECT_WORKFLOW,
        REGISTRY_MEMO_KEY,
        VERSION_ENV_QUERY,
        ProjectState,
        project_workflow_id,
    )
    from multinode.workflows.project import RegistryState, _memo

    state = RegistryState(project_name=project_name, next_version_number=3, dotenvs={"v2": "A=1\n"})

    async def run() -> tuple[str, str, ProjectState, dict[str, Any]]:
        client: Client = await get_client(settings)
        handle = await client.start_workflow(
            PROJECT_WORKFLOW,
            state,  # what continue-as-new passes
            id=project_workflow_id(project_name),
            task_queue=settings.task_queue,
            memo={REGISTRY_MEMO_KEY: _memo(state)},
        )
        kept = await handle.query(VERSION_ENV_QUERY, "v2", result_type=str)
        other = await handle.query(VERSION_ENV_QUERY, "v1", result_type=str)
        described = await handle.query(DESCRIBE_QUERY, result_type=ProjectState)
        memo = await (await handle.describe()).memo()
        await handle.terminate("test over")
        return kept, other, described, memo

    kept, other, described, memo = asyncio.run(run())
    assert (kept, other) == ("A=1\n", "")
    assert described == ProjectState(project_name=project_name, next_version_number=3)
    assert "dotenvs" not in memo[REGISTRY_MEMO_KEY] and "A=1" not in json.dumps(memo)
