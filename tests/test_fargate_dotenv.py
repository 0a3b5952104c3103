"""A fargate version's ``.env`` reaches its function at run time, not through its image.

End to end on the fake Fargate data plane (tests/test_fargate.py's ``fargate_stack``): the "image" the
fake runs is the version's build context, which holds no ``.env``, so the value the function reads can
only have come from the registry through the container's agent. The value is then looked for where it
must not be: RunTask overrides, the task definition, the container's log, ``mn describe``, and the
registry's raw history (payloads are encrypted: registration requires it for a ``.env``).
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import boto3
import pytest

from multinode import get_deployed_function
from multinode._codec import ENV_ENCRYPTION_KEYS, new_key
from multinode._settings import MultinodeSettings
from multinode.provisioner.fargate_settings import FargateSettings
from tests.aws import (  # noqa: F401 - fixtures
    REAL_AWS,
    fixture_aws_env,
    fixture_aws_network,
    fixture_aws_target,
    fixture_fake_fargate,
    fixture_fargate_settings,
)
from tests.test_encryption import _contains_base64_of
from tests.test_fargate import fargate_stack, settings  # noqa: F401 - fixtures
from tests.test_progress import temporal_cli

pytestmark = [pytest.mark.timeout(180), pytest.mark.skipif(REAL_AWS, reason="the fake data plane runs on moto")]

SECRET = "dotenv-" + uuid.uuid4().hex
DOTENV = f'# the function\'s settings\nSOME_VAR="{SECRET}"\nDERIVED=${{SOME_VAR}}-derived\n'

TASKS = """
import asyncio
import os

from multinode import Multinode

AT_IMPORT = os.environ.get("SOME_VAR")  # loaded before main.py is imported

mn = Multinode()


@mn.function()
def reads_env():
    from multinode._client import get_client
    from multinode._settings import MultinodeSettings

    client = asyncio.run(get_client(MultinodeSettings.from_env()))
    registry = client.get_workflow_handle("multinode-project:" + os.environ["MULTINODE_PROJECT"])
    version = os.environ["MULTINODE_VERSION_ID"]
    attempts = {}
    for name, call in {
        "query": lambda: registry.query("version_env", version),
        "history": lambda: registry.fetch_history(),
        "describe": lambda: registry.describe(),
    }.items():
        try:
            asyncio.run(call())
            attempts[name] = "allowed"
        except Exception as exc:
            attempts[name] = f"{type(exc).__name__}: {exc}"
    print("the function ran", flush=True)
    return {
        "value": os.environ["SOME_VAR"],
        "derived": os.environ["DERIVED"],
        "at_import": AT_IMPORT,
        "env_file_in_image": os.path.exists(".env"),
        "attempts": attempts,
    }
"""


@pytest.fixture
def encrypted(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key for every client of the test (requested first: the settings and the worker are made after)."""
    monkeypatch.setenv(ENV_ENCRYPTION_KEYS, new_key("dotenv"))


def test_env_reaches_the_function_from_the_registry_and_nowhere_else(
    encrypted: None,
    fargate_stack: Any,  # noqa: F811 - test_fargate's fixture
    settings: MultinodeSettings,  # noqa: F811 - test_fargate's fixture
    fargate_settings: FargateSettings,
    project_name: str,
) -> None:
    from multinode._credentials import secrets_blob

    assert settings.encryption_keys.get_secret_value()
    # The containers' secrets (their Temporal profile and the key), as `mn container-secret` prints them.
    secrets = boto3.client("secretsmanager", region_name=fargate_settings.region)
    secrets.put_secret_value(
        SecretId=fargate_settings.container_secret_arn, SecretString=secrets_blob(settings.to_env())
    )
    record = fargate_stack({"main.py": TASKS, ".env": DOTENV})
    fn = get_deployed_function(project_name, "reads_env")
    invocation_id = fn.start()
    report = fn.await_result(invocation_id, timeout=120)
    assert report["env_file_in_image"] is False
    assert (report["value"], report["derived"], report["at_import"]) == (SECRET, f"{SECRET}-derived", SECRET)
    # User code may describe a registry (the SDK does) but not read the `.env` of any version from it.
    assert report["attempts"]["describe"] == "allowed"
    for refused in ("query", "history"):
        assert "PERMISSION_DENIED" in report["attempts"][refused] or "refused" in report["attempts"][refused]

    # Nowhere else: RunTask overrides, the task definition, the container's log, `mn describe`.
    ecs = boto3.client("ecs", region_name=fargate_settings.region)
    arns = ecs.list_tasks(cluster=fargate_settings.cluster, desiredStatus="STOPPED")["taskArns"]
    arns += ecs.list_tasks(cluster=fargate_settings.cluster, desiredStatus="RUNNING")["taskArns"]
    tasks = ecs.describe_tasks(cluster=fargate_settings.cluster, tasks=arns)["tasks"]
    assert tasks and SECRET not in json.dumps(tasks, default=str)
    for definition in {task["taskDefinitionArn"] for task in tasks}:
        described = ecs.describe_task_definition(taskDefinition=definition)["taskDefinition"]
        assert described["containerDefinitions"][0]["image"] == record.artifact["image"]
        assert SECRET not in json.dumps(described, default=str)
    logs = fn.logs(invocation_id)
    assert "the function ran" in logs and SECRET not in logs
    mn = str(Path(sys.executable).parent / "mn")
    described_project = subprocess.run([mn, "describe", project_name, "--json"], capture_output=True, text=True)
    assert described_project.returncode == 0, described_project.stderr
    assert SECRET not in described_project.stdout and "dotenv" not in described_project.stdout
    # The registry's history holds the text only encrypted.
    raw = temporal_cli(settings, "workflow", "show", "--workflow-id", f"multinode-project:{project_name}")
    assert "binary/encrypted" in raw or "YmluYXJ5L2VuY3J5cHRlZA" in raw
    assert SECRET not in raw and not _contains_base64_of(raw, SECRET)
