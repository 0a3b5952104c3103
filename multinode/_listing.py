"""Newest-first paging over a function's invocations.

Temporal's SQL visibility stores (the dev server, PostgreSQL, MySQL) reject ``ORDER BY`` and return
running workflows first, then closed ones by close time. To page by creation time we look back from
a cursor through time windows that grow until one holds a full page (a count query per step), fetch
that window, and sort it by (start time, workflow id): every invocation outside the window is older
than every one inside it. The offset names the last (start time, id) returned, so invocations that
share the boundary's start time are neither skipped nor repeated.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

from temporalio.client import Client

FIRST_WINDOW = timedelta(minutes=1)
"""Width of the first look-back window; each next window is four times wider."""
_RESOLUTION = timedelta(microseconds=1)
"""Visibility stores start times to the microsecond; Python's datetimes hold no finer time."""

Row = tuple[datetime, str]
Count = Callable[[str], Awaitable[int]]
Fetch = Callable[[str], Awaitable[list[Row]]]


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode_offset(row: Row) -> str:
    return f"{row[0].isoformat()}|{row[1]}"


def decode_offset(offset: str) -> Row:
    """``ValueError`` if ``offset`` is not one of ours. A bare time (older offsets) means "before it"."""
    moment, _, workflow_id = offset.partition("|")
    parsed = datetime.fromisoformat(moment)
    if parsed.tzinfo is None:
        raise ValueError(offset)
    return parsed, workflow_id


async def newest_first(client: Client, query: str, limit: int, offset: str | None) -> tuple[list[str], str | None]:
    """Ids of the ``limit`` newest workflows matching ``query`` after ``offset``, and the next offset."""

    async def count(where: str) -> int:
        return (await client.count_workflows(where)).count

    async def fetch(where: str) -> list[Row]:
        return [(wf.start_time, wf.id) async for wf in client.list_workflows(where, page_size=1000)]

    return await page_newest_first(count, fetch, query, limit, offset)


async def page_newest_first(
    count: Count, fetch: Fetch, query: str, limit: int, offset: str | None
) -> tuple[list[str], str | None]:
    """The paging itself, over any store that answers visibility queries with counts and rows."""
    cursor = decode_offset(offset) if offset else None
    # Inclusive of the cursor's start time: invocations sharing it may not all have been shown.
    upper = cursor[0] + _RESOLUTION if cursor else datetime.now(timezone.utc) + timedelta(days=1)
    before = f"{query} AND StartTime < '{_rfc3339(upper)}'"
    total = await count(before)
    window = FIRST_WINDOW
    while total:
        in_window = f"{before} AND StartTime >= '{_rfc3339(upper - window)}'"
        found = await count(in_window)
        if found >= limit or found >= total:
            rows = sorted((r for r in await fetch(in_window) if cursor is None or r < cursor), reverse=True)
            # Rows at the cursor's time that were already shown may leave the window short of a page.
            if len(rows) >= limit or found >= total:
                page = rows[:limit]
                more = len(rows) > limit or found < total
                return [wf_id for _, wf_id in page], encode_offset(page[-1]) if more and page else None
        window *= 4
    return [], None
