"""A project's registry entry: one long-running workflow per project, id ``multinode-project:NAME``.

It numbers versions (``v1``, ``v2``, ...) and keeps every version's function configs. The whole state
is also in the workflow's memo so that ``.start`` can resolve a version with a plain describe call,
which needs no worker: an invocation started while the control plane is down is still recorded.
"""

from __future__ import annotations

from dataclasses import asdict

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from multinode._protocol import (
        DELETE_UPDATE,
        DESCRIBE_QUERY,
        PROJECT_WORKFLOW,
        REGISTER_UPDATE,
        REGISTRY_MEMO_KEY,
        ProjectState,
        VersionRecord,
        VersionRegistration,
    )

HISTORY_EVENTS_BEFORE_CONTINUE_AS_NEW = 1_000
"""The registry restarts itself with its state once its history is this long (memo upserts add up)."""


@workflow.defn(name=PROJECT_WORKFLOW)
class ProjectWorkflow:
    @workflow.init
    def __init__(self, state: ProjectState) -> None:
        self._state = state

    @workflow.run
    async def run(self, state: ProjectState) -> ProjectState:
        await workflow.wait_condition(
            lambda: (
                self._state.deleted
                or workflow.info().get_current_history_length() > HISTORY_EVENTS_BEFORE_CONTINUE_AS_NEW
                or workflow.info().is_continue_as_new_suggested()
            )
        )
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._state.deleted:
            return self._state
        workflow.continue_as_new(self._state, memo={REGISTRY_MEMO_KEY: asdict(self._state)})

    @workflow.query(name=DESCRIBE_QUERY)
    def describe(self) -> ProjectState:
        return self._state

    @workflow.update(name=REGISTER_UPDATE)
    def register_version(self, registration: VersionRegistration) -> VersionRecord:
        record = VersionRecord(
            version_id=f"v{self._state.next_version_number}",
            created_at=workflow.now().isoformat(),
            code_digest=registration.code_digest,
            provisioner=registration.provisioner,
            artifact=registration.artifact,
            functions=registration.functions,
        )
        self._state.versions.append(record)
        self._state.next_version_number += 1
        workflow.upsert_memo({REGISTRY_MEMO_KEY: asdict(self._state)})
        return record

    @register_version.validator
    def _validate_registration(self, registration: VersionRegistration) -> None:
        if self._state.deleted:
            raise ValueError(f"project {self._state.project_name!r} is being deleted")
        if not registration.functions:
            raise ValueError("a version needs at least one function")

    @workflow.update(name=DELETE_UPDATE)
    def delete_project(self) -> ProjectState:
        self._state.deleted = True
        workflow.upsert_memo({REGISTRY_MEMO_KEY: asdict(self._state)})
        return self._state
