"""A project's registry entry: one long-running workflow per project, id ``multinode-project:NAME``.

It numbers versions (``v1``, ``v2``, ...) and keeps every version's function configs. The whole state
is also in the workflow's memo so that ``.start`` can resolve a version with a plain describe call,
which needs no worker: an invocation started while the control plane is down is still recorded.

Deleting a project keeps its workflow running as a tombstone (``deleted``, invisible to readers) so that
the numbering survives: registering the name again continues at the next number, and an application
pinned to an old ``v1`` gets "not found" instead of new code. (A closed workflow would not do: Temporal
forgets it after the namespace's retention period.)

A fargate version's ``.env`` text (it is not in the image) is kept in the state's ``dotenvs``, which the
memo, the version records, the describe query and update results leave out (``mn describe`` and every
function's agent read those). It travels only in the registration's update input and continue-as-new
input (encrypted with the payloads; in plain text without keys, and registration warns), at most
``MAX_REGISTRY_DOTENV_BYTES`` over all versions. A container's agent reads its own version's text
with ``VERSION_ENV_QUERY``; the gate refuses user code that query and the registry's history.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from multinode._protocol import (
        DELETE_UPDATE,
        DESCRIBE_QUERY,
        PROJECT_WORKFLOW,
        REGISTER_UPDATE,
        REGISTRY_MEMO_KEY,
        VERSION_ENV_QUERY,
        ProjectState,
        VersionRecord,
        VersionRegistration,
    )

HISTORY_EVENTS_BEFORE_CONTINUE_AS_NEW = 1_000
"""The registry restarts itself with its state once its history is this long (memo upserts add up)."""
TOMBSTONE_PATCH = "multinode-project-tombstone"
"""From this patch on, a deleted project's workflow keeps running (before it, the run ended at deletion)."""


@dataclass
class RegistryState(ProjectState):
    """The workflow's own state: ``ProjectState`` (what the memo, queries and updates show) and the
    ``.env`` texts, which only this state and its continue-as-new input hold. A run started with a
    ``ProjectState`` (a new project, or a run recorded before ``.env`` texts were kept) starts without."""

    dotenvs: dict[str, str] = field(default_factory=dict, repr=False)
    """version id -> its ``.env`` text (fargate versions)."""


MAX_REGISTRY_DOTENV_BYTES = 1024 * 1024
"""Bytes of ``.env`` texts one project's registry may hold over all its versions: the texts are part of
each continued run's input, which Temporal caps at 2 MB."""


@workflow.defn(name=PROJECT_WORKFLOW)
class ProjectWorkflow:
    @workflow.init
    def __init__(self, state: RegistryState) -> None:
        self._state = state
        # True once this run keeps going after a deletion (TOMBSTONE_PATCH); a tombstone's next run starts so.
        self._tombstone = state.deleted

    @workflow.run
    async def run(self, state: RegistryState) -> ProjectState:
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
                    return _shown(self._state)  # a run recorded before the patch ended at deletion
                self._tombstone = True
                continue
            # The next run's input holds the `.env` texts (its memo does not).
            workflow.continue_as_new(self._state, memo={REGISTRY_MEMO_KEY: _memo(self._state)})

    @workflow.query(name=DESCRIBE_QUERY)
    def describe(self) -> ProjectState:
        return _shown(self._state)

    @workflow.query(name=VERSION_ENV_QUERY)
    def version_env(self, version_id: str) -> str:
        """The ``.env`` text of a version ('' when it has none, or is deleted)."""
        return "" if self._state.deleted else self._state.dotenvs.get(version_id, "")

    @workflow.update(name=REGISTER_UPDATE)
    def register_version(self, registration: VersionRegistration) -> VersionRecord:
        if self._state.deleted:
            # Registering a deleted project's name again: a new project whose numbering continues.
            self._state.deleted = False
            self._state.versions = []
            self._state.dotenvs = {}
        record = VersionRecord(
            version_id=f"v{self._state.next_version_number}",
            created_at=workflow.now().isoformat(),
            code_digest=registration.code_digest,
            provisioner=registration.provisioner,
            artifact=registration.artifact,
            functions=registration.functions,
        )
        self._state.versions.append(record)
        if registration.dotenv:
            self._state.dotenvs[record.version_id] = registration.dotenv
        self._state.next_version_number += 1
        workflow.upsert_memo({REGISTRY_MEMO_KEY: _memo(self._state)})
        return record

    @register_version.validator
    def _validate_registration(self, registration: VersionRegistration) -> None:
        if self._state.deleted and not self._tombstone:
            raise ValueError(f"project {self._state.project_name!r} is being deleted")
        if not registration.functions:
            raise ValueError("a version needs at least one function")
        if registration.dotenv and not self._state.deleted:
            held = sum(len(text.encode()) for text in self._state.dotenvs.values())
            if held + len(registration.dotenv.encode()) > MAX_REGISTRY_DOTENV_BYTES:
                raise ValueError(
                    f"project {self._state.project_name!r} already holds {held:,} bytes of .env texts for its "
                    f"versions, and at most {MAX_REGISTRY_DOTENV_BYTES:,} fit in its registry (they travel with it "
                    "in Temporal): make .env smaller, keep large values in AWS Secrets Manager read by the "
                    "function, or register under a new project name (`mn delete` frees a project's)"
                )

    @workflow.update(name=DELETE_UPDATE)
    def delete_project(self) -> ProjectState:
        self._state.deleted = True
        self._state.dotenvs = {}  # nothing runs a deleted project's versions any more
        workflow.upsert_memo({REGISTRY_MEMO_KEY: _memo(self._state)})
        return _shown(self._state)


def _memo(state: RegistryState) -> dict[str, Any]:
    """The state as the memo shows it (to ``mn describe``, ``.start`` and every function's agent)."""
    return asdict(_shown(state))


def _shown(state: RegistryState) -> ProjectState:
    """The state without the ``.env`` texts, as the memo, a query or an update's result shows it."""
    return ProjectState(**{f.name: getattr(state, f.name) for f in fields(ProjectState)})
