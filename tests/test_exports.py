"""The public surface is pinned: changing it must be a decision, not an accident."""

import multinode
import multinode.errors


def test_package_exports() -> None:
    assert sorted(multinode.__all__) == [
        "DeployedFunction",
        "ErrorDetails",
        "Execution",
        "Function",
        "Invocation",
        "InvocationIdsList",
        "InvocationStatus",
        "Multinode",
        "MultinodeSettings",
        "errors",
        "get_deployed_function",
    ]
    for name in multinode.__all__:
        assert getattr(multinode, name) is not None


def test_error_hierarchy() -> None:
    assert sorted(multinode.errors.__all__) == [
        "AwaitTimeoutError",
        "ConfigurationError",
        "ControlPlaneUnavailableError",
        "FunctionNotFoundError",
        "InvalidTasksFolderError",
        "InvocationCancelledError",
        "InvocationError",
        "InvocationFailedError",
        "InvocationNotFoundError",
        "InvocationTimedOutError",
        "MultinodeError",
        "NotFoundError",
        "PayloadError",
        "ProjectNotFoundError",
        "ProvisionerError",
        "TemporalUnreachableError",
        "ValidationError",
        "VersionNotFoundError",
        "VersionNotStoredError",
    ]
    for name in multinode.errors.__all__:
        assert issubclass(getattr(multinode.errors, name), multinode.errors.MultinodeError)


def test_importing_loads_no_settings_and_no_boto3() -> None:
    import subprocess
    import sys

    code = (
        "import os, sys; os.environ['MULTINODE_GRACE_PERIOD_SECONDS'] = 'not-a-number'; "
        "import multinode; assert 'boto3' not in sys.modules; print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.stdout.strip() == "ok", done.stderr
