"""One vocabulary: statuses, error types, interrupt reasons, container states and exit reasons live in
``multinode/_vocabulary.py`` only, and travel as their plain strings."""

from __future__ import annotations

import ast
import enum
import json
from pathlib import Path

import pytest
from temporalio.converter import DataConverter

import multinode
import multinode.errors
from multinode import _types, _vocabulary
from multinode._protocol import ErrorInfo, ExecutionState, InterruptInput
from multinode._vocabulary import (
    FINAL_STATUSES,
    ContainerState,
    ErrorType,
    ExitReason,
    InterruptReason,
    InvocationStatus,
    is_resource_limit_exit,
    user_error_type,
)

PACKAGE = Path(multinode.__file__).resolve().parent
VOCABULARY: list[type[enum.Enum]] = [InvocationStatus, ErrorType, InterruptReason, ContainerState, ExitReason]
MEMBERS = [member for vocabulary in VOCABULARY for member in vocabulary]
FOREIGN: dict[tuple[str, str], str] = {
    ("provisioner/_fargate_aws.py", "Error"): "the key of boto3's error response",
    ("provisioner/_fargate_listing.py", "RUNNING"): "an ECS task status (ListTasks desiredStatus)",
}
"""Strings that equal a vocabulary value by chance, in someone else's vocabulary."""


def _docstrings(tree: ast.AST) -> set[int]:
    """Ids of the string constants that are docstrings (of modules, classes, functions, attributes)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            found.add(id(node.value))
    return found


def _dunder_all(tree: ast.Module) -> set[int]:
    """Ids of the constants in ``__all__`` (names of classes, e.g. ``multinode.errors.PayloadError``)."""
    found = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            found.update(id(c) for c in ast.walk(node.value) if isinstance(c, ast.Constant))
    return found


def test_no_vocabulary_value_is_written_outside_its_module() -> None:
    values = {member.value for member in MEMBERS}
    stray = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative == "_vocabulary.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        skipped = _docstrings(tree) | _dunder_all(tree)
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in skipped:
                continue
            if node.value in values and (relative, node.value) not in FOREIGN:
                stray.append(f"multinode/{relative}:{node.lineno}: {node.value!r}")
    assert not stray, "use the members of multinode._vocabulary instead:\n" + "\n".join(stray)


def test_foreign_exceptions_are_still_needed() -> None:
    """Each exception of the check above still matches a string in its file (else it is stale)."""
    for relative, value in FOREIGN:
        tree = ast.parse((PACKAGE / relative).read_text())
        assert any(isinstance(n, ast.Constant) and n.value == value for n in ast.walk(tree)), (relative, value)


@pytest.mark.parametrize("member", MEMBERS, ids=[f"{type(m).__name__}.{m.name}" for m in MEMBERS])
async def test_values_travel_as_plain_strings(member: enum.Enum) -> None:
    assert isinstance(member, str) and member == member.value
    assert str(member) == f"{member}" == member.value
    assert json.dumps(member) == json.dumps(member.value)
    converter = DataConverter.default
    [as_member] = await converter.encode([member])
    [as_string] = await converter.encode([member.value])
    assert as_member == as_string
    [decoded] = await converter.decode([as_member], [str])
    assert decoded == member and type(decoded) is str
    assert type(member)(decoded) is member


async def test_dataclasses_holding_members_encode_as_holding_strings() -> None:
    converter = DataConverter.default
    with_members = [
        ExecutionState("e-1", 1, InvocationStatus.FAILED, error=ErrorInfo(ErrorType.CONTAINER_LOST, "gone")),
        InterruptInput(InterruptReason.TIMED_OUT),
    ]
    with_strings = [
        ExecutionState("e-1", 1, "FAILED", error=ErrorInfo("ContainerLostError", "gone")),
        InterruptInput("timed_out"),
    ]
    assert await converter.encode(with_members) == await converter.encode(with_strings)


def test_invocation_status_is_one_public_enum() -> None:
    assert multinode.InvocationStatus is _types.InvocationStatus is _vocabulary.InvocationStatus
    assert [s.value for s in InvocationStatus] == [
        "PENDING",
        "RUNNING",
        "CANCELLING",
        "SUCCEEDED",
        "FAILED",
        "CANCELLED",
        "TIMED_OUT",
    ]
    assert {s for s in InvocationStatus if s.is_final} == FINAL_STATUSES
    assert "SUCCEEDED" in FINAL_STATUSES and "RUNNING" not in FINAL_STATUSES  # plain strings, as decoded


def test_error_types_name_the_sdk_errors_they_stand_for() -> None:
    for error_type in (
        ErrorType.INVOCATION_CANCELLED,
        ErrorType.INVOCATION_TIMED_OUT,
        ErrorType.PAYLOAD,
        ErrorType.PROVISIONER,
        ErrorType.VERSION_NOT_STORED,
    ):
        assert getattr(multinode.errors, error_type.value).__name__ == error_type.value


def test_only_the_agent_reports_agent_only_error_types() -> None:
    assert user_error_type("InvocationCancelledError") == "multinode.errors.InvocationCancelledError"
    assert user_error_type("InvocationTimedOutError") == "multinode.errors.InvocationTimedOutError"
    assert user_error_type("ValueError") == "ValueError"


def test_exit_reasons_are_told_by_their_first_words() -> None:
    oom = ExitReason.OUT_OF_MEMORY.with_details("the processes used 600 MiB; raise `memory` in @mn.function")
    assert oom.startswith("out of memory: ") and ExitReason.of(oom) is ExitReason.OUT_OF_MEMORY
    assert is_resource_limit_exit(oom)
    assert is_resource_limit_exit(ExitReason.TOO_MANY_PROCESSES.with_details("2000 processes"))
    assert ExitReason.of("exited normally") is ExitReason.EXITED_NORMALLY
    assert not is_resource_limit_exit("exited normally")
    assert ExitReason.of("exited with code 3") is None and not is_resource_limit_exit("killed by signal SIGKILL")
