"""Newest-first paging over a function's invocations.

Temporal's SQL visibility stores (the dev server, PostgreSQL, MySQL) reject ``ORDER BY`` and return
running workflows first, then closed ones by close time. To page by creation time we look back from
a cursor through time windows that grow until one holds a full page (a count query per step), fetch
that window, and sort it: every invocation outside the window is older than every one inside it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from temporalio.client import Client

FIRST_WINDOW = timedelta(minutes=1)
"""Width of the first look-back window; each next window is four times wider."""


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


async def newest_first(client: Client, query: str, limit: int, offset: str | None) -> tuple[list[str], str | None]:
    """Ids of the ``limit`` newest workflows matching ``query`` older than ``offset``, and the next offset."""
    if offset:
        upper = datetime.fromisoformat(offset)
    else:
        upper = datetime.now(timezone.utc) + timedelta(days=1)
    before = f"{query} AND StartTime < '{_rfc3339(upper)}'"
    total = (await client.count_workflows(before)).count
    if total == 0:
        return [], None
    window = FIRST_WINDOW
    while True:
        in_window = f"{before} AND StartTime >= '{_rfc3339(upper - window)}'"
        found = (await client.count_workflows(in_window)).count
        if found >= limit or found >= total:
            break
        window *= 4
    rows = [(wf.start_time, wf.id) async for wf in client.list_workflows(in_window, page_size=1000)]
    rows.sort(reverse=True)
    page = rows[:limit]
    more = total > len(page)
    return [wf_id for _, wf_id in page], page[-1][0].isoformat() if more and page else None
