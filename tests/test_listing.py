"""Newest-first paging: every invocation exactly once, including those that share a start time.

Temporal stores start times to the microsecond, so ties are rare in a live run and cannot be made on
purpose; the paging runs here over an in-memory store that answers the same visibility clauses.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from multinode._listing import Row, page_newest_first

_CLAUSE = re.compile(r"StartTime (<|>=) '([^']+)'")


class Store:
    def __init__(self, rows: list[Row]) -> None:
        self.rows = rows

    def _matching(self, where: str) -> list[Row]:
        rows = self.rows
        for op, text in _CLAUSE.findall(where):
            bound = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
            rows = [r for r in rows if (r[0] < bound if op == "<" else r[0] >= bound)]
        return rows

    async def count(self, where: str) -> int:
        return len(self._matching(where))

    async def fetch(self, where: str) -> list[Row]:
        return list(reversed(self._matching(where)))  # no particular order, as in Temporal


async def all_pages(store: Store, limit: int, offset: str | None = None) -> list[str]:
    seen: list[str] = []
    while True:
        ids, offset = await page_newest_first(store.count, store.fetch, "Q", limit, offset)
        seen += ids
        if offset is None:
            return seen


@pytest.mark.timeout(30)
@pytest.mark.parametrize("distinct_times", [1, 3, 7, 130])
async def test_every_invocation_exactly_once_newest_first(distinct_times: int) -> None:
    now = datetime.now(timezone.utc)
    rows = [(now - timedelta(seconds=i % distinct_times * 90), f"inv-{i:03d}") for i in range(130)]
    store = Store(rows)
    seen = await all_pages(store, limit=50)
    assert sorted(seen) == sorted(wf_id for _, wf_id in rows)  # each once
    assert seen == [wf_id for _, wf_id in sorted(rows, reverse=True)]  # newest first, ties by id


@pytest.mark.timeout(30)
async def test_a_page_boundary_inside_a_tie() -> None:
    now = datetime.now(timezone.utc)
    rows = [(now, f"inv-{i}") for i in range(5)] + [(now - timedelta(hours=3), "inv-old")]
    ids, offset = await page_newest_first(Store(rows).count, Store(rows).fetch, "Q", 3, None)
    assert ids == ["inv-4", "inv-3", "inv-2"] and offset
    ids, offset = await page_newest_first(Store(rows).count, Store(rows).fetch, "Q", 3, offset)
    assert ids == ["inv-1", "inv-0", "inv-old"] and offset is None


@pytest.mark.timeout(30)
async def test_an_empty_store_has_one_empty_page() -> None:
    assert await page_newest_first(Store([]).count, Store([]).fetch, "Q", 50, None) == ([], None)
