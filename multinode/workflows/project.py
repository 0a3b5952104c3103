"""A project's registry entry: one long-running workflow per project, id ``multinode-project:NAME``.

It numbers versions (``v1``, ``v2``, ...) and keeps every version's function configs. The whole state
is also in the workflow's memo so that ``.start`` can resolve a version with a plain describe call,
which needs no worker: an invocation started while the control plane is down is still recorded.

Deleting a project keeps its workflow running as a tombstone (``deleted``, invisible to readers) so that
the numbering survives: registering the name again continues at the next number, and an application
pinned to an old ``v1`` gets "not found" instead of new code. (A closed workflow would not do: Temporal
forgets it after the namespace's retention period.)
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
TOMBSTONE_PATCH = "multinode-project-tombstone"
"""From this patch on, a deleted project's workflow keeps running (before it, the run ended at deletion)."""


@workflow.defn(name=PROJECT_WORKFLOW)
class ProjectWorkflow:
    @workflow.init
    def __init__(self, state: ProjectState) -> None:
        self._state = state
        # True once this run keeps going after a deletion (TOMBSTONE_PATCH); a tombstone's next run starts so.
        self._tombstone = state.deleted

    @workflow.run
    async def run(self, state: ProjectState) -> ProjectState:
        while True:
            await workflow.wait_condition(
                lambda: (
                    (self._state.deleted and not self._tombstone)
                    or workflow.info().get_current_history_length() > HISTORY_EVENTS_BEFORE_CONTINUE_AS_NEW
                    or workflow.info().is_continue_as_new_suggested()
                )
            )
            await workflow.wait_condition(workflow.all_handlers_finished)
            if self._state.deleted and not self._tombstone:
                if not workflow.patched(TOMBSTONE_PATCH):
                    return self._state  # a run recorded before the patch ended at deletion
                self._tombstone = True
                continue
            workflow.continue_as_new(self._state, memo={REGISTRY_MEMO_KEY: asdict(self._state)})

    @workflow.query(name=DESCRIBE_QUERY)
    def describe(self) -> ProjectState:
        return self._state

    @workflow.update(name=REGISTER_UPDATE)
    def register_version(self, registration: VersionRegistration) -> VersionRecord:
        if self._state.deleted:
            # Registering a deleted project's name again: a new project whose numbering continues.
            self._state.deleted = False
            self._state.versions = []
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
        if self._state.deleted and not self._tombstone:
            raise ValueError(f"project {self._state.project_name!r} is being deleted")
        if not registration.functions:
            raise ValueError("a version needs at least one function")

    @workflow.update(name=DELETE_UPDATE)
    def delete_project(self) -> ProjectState:
        self._state.deleted = True
        workflow.upsert_memo({REGISTRY_MEMO_KEY: asdict(self._state)})
        return self._state
