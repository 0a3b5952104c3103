"""Multinode: run long asynchronous Python tasks, each in its own container, orchestrated by Temporal."""

from multinode import errors
from multinode._handle import DeployedFunction
from multinode._sdk import Function, Multinode, get_deployed_function
from multinode._settings import MultinodeSettings
from multinode._types import ErrorDetails, Execution, Invocation, InvocationIdsList, InvocationStatus

__all__ = [
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
