"""Newest-first paging over a function's invocations.

Temporal's SQL visibility stores (the dev server, PostgreSQL, MySQL) reject ``ORDER BY`` and return
running workflows first, then closed ones by close time. To page by creation time we look back from
a cursor through time windows that grow until one holds a full page (a count query per step), fetch
that window, and sort it by (start time, workflow id): every invocation outside the window is older
than every one inside it. The offset names the last (start time, id) returned, so invocations that
share the boundary's start time are neither skipped nor repeated.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta, timezone

from temporalio.client import Client

from multinode.errors import ValidationError

FIRST_WINDOW = timedelta(minutes=1)
"""Width of the first look-back window; each next window is four times wider."""
_RESOLUTION = timedelta(microseconds=1)
"""Visibility stores start times to the microsecond; Python's datetimes hold no finer time."""

Row = tuple[datetime, str]
Count = Callable[[str], Awaitable[int]]
Fetch = Callable[[str], Awaitable[list[Row]]]


def quote_query_value(value: str) -> str:
    """``value`` as a string literal of Temporal's visibility queries (List Filters), matching exactly it.

    The query language is SQL-like: a literal is single-quoted and a quote inside it is escaped with a
    backslash (``'it\\'s'``), so a name holding ``' OR MultinodeProject = 'x`` stays one literal.

    Temporal then loses some values on the way (checked on server 1.32, the ``mn dev`` one): it trims
    every quote from both ends of a parsed value (``'it'`` is searched as ``it``), and its SQL visibility
    stores (SQLite, PostgreSQL) re-escape the value MySQL-style, which SQLite and PostgreSQL do not undo,
    so a backslash, a double quote or a control character cannot be matched exactly (``a\\b`` would match
    the value ``a\\\\b``, ``a"b`` nothing). Such values are refused with ``ValidationError`` rather than
    turned into a query that silently matches something else. Valid names never hold them (``_limits``).
    """
    if not isinstance(value, str):
        raise ValidationError(f"Only a string can be searched for in Temporal's visibility store, not {value!r}.")
    bad = next((c for c in value if c in '\\"' or unicodedata.category(c) == "Cc"), None)
    if bad is not None or value.startswith("'") or value.endswith("'"):
        why = f"it holds {bad!r}" if bad is not None else "it starts or ends with a quote"
        raise ValidationError(
            f"{value!r} cannot be searched for exactly in Temporal's visibility store: {why} (backslashes, double "
            "quotes, control characters and quotes at either end are not matched faithfully)."
        )
    return "'" + value.replace("'", "\\'") + "'"


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
    before = f"{query} AND StartTime < {quote_query_value(_rfc3339(upper))}"
    total = await count(before)
    window = FIRST_WINDOW
    while total:
        in_window = f"{before} AND StartTime >= {quote_query_value(_rfc3339(upper - window))}"
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
