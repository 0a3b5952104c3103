"""Workflow code still replays recorded histories: upgrading workers must not break invocations in flight.

The histories come from tests/histories/record.py (real runs). A change to a workflow that alters the
commands it issues for an existing history fails here; guard such a change with ``workflow.patched``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from multinode.workflows import InvocationWorkflow, LogReaderWorkflow, LogsWorkflow, ProjectWorkflow, QuotaWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_replays(path: Path) -> None:
    replayer = Replayer(workflows=[InvocationWorkflow, ProjectWorkflow, QuotaWorkflow, LogsWorkflow, LogReaderWorkflow])
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    result = await replayer.replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is None, result.replay_failure


def test_there_are_histories() -> None:
    stems = {p.stem for p in HISTORIES}
    assert stems >= {"invocation_retried_with_progress", "invocation_cancelled", "project"}
    # Invocations recorded before the lean path (patch "multinode-lean-path") must keep replaying.
    assert stems >= {"pre_lean_invocation_retried_with_progress", "pre_lean_invocation_cancelled"}
    # Quotas recorded before grants went out together (patch "multinode-quota-grants-together").
    assert stems >= {"pre_grants_together_quota", "pre_grants_together_quota_arrival_order"}
    # Projects deleted before deletion left a tombstone (patch "multinode-project-tombstone"), and after.
    assert stems >= {"pre_tombstone_project_deleted", "project_deleted_then_registered"}
    # The log reader of a task queue never ends: every version's code must replay its one history.
    assert "log_reader" in stems
