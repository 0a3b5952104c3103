"""Operations on invocations by id and on whole projects, shared by the CLI."""

from __future__ import annotations

import asyncio

from temporalio.client import Client
from temporalio.service import RPCError

from multinode import _invocations
from multinode._client import get_client, is_not_found
from multinode._handle import list_page
from multinode._limits import check_names
from multinode._listing import quote_query_value
from multinode._protocol import INVOCATION_WORKFLOW, SA_PROJECT
from multinode._registry import delete_project
from multinode._settings import MultinodeSettings
from multinode._types import Invocation, InvocationIdsList, InvocationStatus
from multinode.errors import ValidationError


async def get_invocation(settings: MultinodeSettings, invocation_id: str) -> Invocation:
    client = await get_client(settings)
    state = await _invocations.read_state(client, invocation_id, settings)
    return _invocations.to_invocation(state)


async def cancel_invocation(settings: MultinodeSettings, invocation_id: str) -> None:
    client = await get_client(settings)
    await _invocations.describe(client, invocation_id)  # unknown ids are an error
    await _cancel_quietly(client, invocation_id)


async def _cancel_quietly(client: Client, invocation_id: str) -> None:
    """Cancel; an invocation that has just finished (or is gone) is not an error."""
    try:
        await client.get_workflow_handle(invocation_id).cancel()
    except RPCError as exc:
        if not is_not_found(exc):  # NOT_FOUND: gone, or it has just ended
            raise


async def list_invocations(
    settings: MultinodeSettings, project: str, function: str, offset: str | None, status: str | None
) -> tuple[InvocationIdsList, list[Invocation]]:
    if status is not None and status.upper() not in InvocationStatus.__members__:
        raise ValidationError(f"Unknown status {status!r}; use one of {', '.join(InvocationStatus.__members__)}.")
    check_names(project, function)
    client = await get_client(settings)
    page = await list_page(client, project, function, offset, status.upper() if status else None)
    invocations = await asyncio.gather(*(get_invocation(settings, i) for i in page.invocation_ids))
    return page, list(invocations)


async def delete_project_and_invocations(settings: MultinodeSettings, project: str) -> int:
    client = await get_client(settings)
    # Delete first, so that no new invocation starts; then cancel what is in flight.
    await delete_project(client, settings, project)
    query = (
        f"WorkflowType = {quote_query_value(INVOCATION_WORKFLOW)} AND {SA_PROJECT} = {quote_query_value(project)} "
        f"AND ExecutionStatus = {quote_query_value('Running')}"
    )
    ids = [wf.id async for wf in client.list_workflows(query)]
    await asyncio.gather(*(_cancel_quietly(client, i) for i in ids))
    return len(ids)


async def print_logs(settings: MultinodeSettings, invocation_id: str, execution_id: str | None, follow: bool) -> None:
    client = await get_client(settings)
    async for chunk in _invocations.log_chunks(client, settings, invocation_id, execution_id, follow=follow):
        print(chunk, end="", flush=True)
