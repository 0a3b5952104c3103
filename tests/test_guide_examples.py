"""The examples of function-definitions.md, run as written on a real dev server and real containers."""

from __future__ import annotations

import os

import pytest
from temporalio.client import Client

from multinode import InvocationStatus, get_deployed_function
from multinode._settings import MultinodeSettings

GUIDE_BASIC = """
from multinode import Multinode
import time

mn = Multinode()

@mn.function()
def slowly_calculate_sum_of_squares(bound):
    sum = 0
    for i in range(bound):
        sum += i * i
        time.sleep(1)
    return sum
"""


def test_basic_example_returns_sum_and_deprovisions(register, project_name: str) -> None:
    record = register({"main.py": GUIDE_BASIC})
    assert record.version_id == "v1"
    fn = get_deployed_function(project_name=project_name, function_name="slowly_calculate_sum_of_squares")
    invocation_id = fn.start(bound=3)
    assert fn.await_result(invocation_id, timeout=60) == 0 + 1 + 4
    invocation = fn.get(invocation_id)
    assert invocation.status == InvocationStatus.SUCCEEDED
    assert invocation.result == 5
    assert invocation.terminated is True
    assert invocation.error is None
    assert invocation.num_failed_attempts == 0
    assert (invocation.project_name, invocation.function_name, invocation.version_id) == (
        project_name,
        "slowly_calculate_sum_of_squares",
        "v1",
    )
    assert len(invocation.executions) == 1
    execution = invocation.executions[0]
    assert execution.status == InvocationStatus.SUCCEEDED and execution.terminated
    assert invocation.created_at <= invocation.started_at <= invocation.finished_at


def test_configuration_options_example(register, project_name: str) -> None:
    register(
        {
            "main.py": """
            from multinode import Multinode
            from datetime import timedelta

            mn = Multinode()

            @mn.function(
                cpu=16,
                memory="64 GiB",
                max_concurrency=25,
                timeout=timedelta(minutes=30),
                max_retries=3
            )
            def run_task(x):
                out = x * 2
                return out
            """
        }
    )
    fn = get_deployed_function(project_name=project_name, function_name="run_task")
    assert fn.call_remote(21) == 42


def test_submodule_import_example_with_two_functions(register, project_name: str) -> None:
    register(
        {
            "submodule/__init__.py": "",
            "submodule/file_1.py": """
            # No @mn.function() decorator - does not define an asynchronous task.
            def square(i):
                return i * i
            """,
            "submodule/file_2.py": "",
            "main.py": """
            from multinode import Multinode
            import time

            # Pay attention to the import path!
            from submodule.file_1 import square

            mn = Multinode()

            @mn.function()
            def slowly_calculate_sum_of_squares(bound):
                sum = 0
                for i in range(bound):
                    sum += square(i)
                    time.sleep(1)
                return sum

            @mn.function()
            def slowly_calculate_product_of_squares(bound):
                product = 1
                for i in range(bound):
                    product *= square(i)
                    time.sleep(1)
                return product
            """,
        }
    )
    total = get_deployed_function(project_name, "slowly_calculate_sum_of_squares")
    product = get_deployed_function(project_name, "slowly_calculate_product_of_squares")
    sum_id = total.start(3)
    product_id = product.start(3)
    assert total.await_result(sum_id, timeout=60) == 5
    assert product.await_result(product_id, timeout=60) == 0


@pytest.mark.timeout(300)  # installs numpy and boto3 (downloaded on a clean machine), then imports them twice
def test_requirements_and_env_example(register, project_name: str, settings: MultinodeSettings) -> None:
    secret = "s3cr3t-value-that-must-not-reach-temporal"
    register(
        {
            "requirements.txt": "boto3==1.28.69\nnumpy==1.26.1\n",
            ".env": f"MY_API_TOKEN={secret}\nGREETING=hello\n",
            "main.py": """
            import os

            import boto3
            import numpy as np
            from multinode import Multinode

            mn = Multinode()

            @mn.function()
            def describe_environment(n):
                token = os.environ["MY_API_TOKEN"]
                return {
                    "numpy": np.__version__,
                    "boto3": boto3.__version__,
                    "total": int(np.arange(n).sum()),
                    "greeting": os.environ["GREETING"],
                    "token_length": len(token),
                }
            """,
        }
    )
    fn = get_deployed_function(project_name, "describe_environment")
    invocation_id = fn.start(5)
    result = fn.await_result(invocation_id, timeout=120)
    assert result == {
        "numpy": "1.26.1",
        "boto3": "1.28.69",
        "total": 10,
        "greeting": "hello",
        "token_length": len(secret),
    }

    async def histories_mention_secret() -> bool:
        client = await Client.connect(settings.temporal_address)
        found = False
        async for execution in client.list_workflows(
            f"MultinodeProject = '{project_name}' OR WorkflowId = 'multinode-project:{project_name}'"
        ):
            history = await client.get_workflow_handle(execution.id, run_id=execution.run_id).fetch_history()
            found = found or secret in history.to_json()
            description = await client.get_workflow_handle(execution.id).describe()
            found = found or secret in str(description.raw_description)
        return found

    import asyncio

    assert not asyncio.run(histories_mention_secret())
    assert "MY_API_TOKEN" not in os.environ


def test_custom_class_round_trips(register, project_name: str) -> None:
    register(
        {
            "main.py": """
            from multinode import Multinode

            mn = Multinode()

            class Point:
                def __init__(self, x, y):
                    self.x = x
                    self.y = y

            @mn.function()
            def mirror(point):
                return Point(point.y, point.x)
            """
        }
    )
    fn = get_deployed_function(project_name, "mirror")
    result = fn.call_remote(Point(1, 2))
    assert isinstance(result, Point)
    assert (result.x, result.y) == (2, 1)


class Point:
    """The application's own copy of the tasks' Point class (the guide's rule for custom classes)."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y
