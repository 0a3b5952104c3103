"""DescribeTasks answers shared by every ``status`` call, refreshed in batches.

The control plane watches every running container with ``status``. DescribeTasks is rate-limited per
account, so a stale answer is refreshed together with every other watched task whose answer is getting
old, up to 100 per call, and the call rate stays about the same however many containers run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

DESCRIBE_BATCH = 100
"""Most tasks one DescribeTasks call describes."""
WATCHED_SECONDS = 60.0
"""A task whose status was asked for within this long is refreshed along with the others."""
FORGET_SECONDS = 3600.0
"""Cached descriptions not asked for within this long are dropped."""


@dataclass
class Described:
    arn: str
    task: dict[str, Any] | None
    """DescribeTasks' answer; None when ECS reported the task MISSING."""
    at: float
    """When the answer came (time.monotonic)."""
    asked: float
    """When ``status`` last wanted this task."""
    missing_since: float | None = None

    @property
    def final(self) -> bool:
        return self.task is not None and self.task.get("lastStatus") == "STOPPED"

    def missing_for(self) -> float:
        return 0.0 if self.missing_since is None else time.monotonic() - self.missing_since


def task_id(arn_or_id: str) -> str:
    return arn_or_id.rsplit("/", 1)[-1]


class TaskDescriptions:
    """The latest DescribeTasks answer per task. ``describe`` makes one DescribeTasks call for at most
    :data:`DESCRIBE_BATCH` task ARNs and returns the tasks ECS knows."""

    def __init__(self, describe: Callable[[list[str]], list[dict[str, Any]]]) -> None:
        self._describe = describe
        self._lock = threading.Lock()
        self.answers: dict[str, Described] = {}
        """task id -> its latest DescribeTasks answer."""

    def recent(self, arn: str, fresh_for: float) -> Described:
        """A description of a task at most ``fresh_for`` seconds old. A stale one is refreshed along with
        the other watched tasks; STOPPED is final and never described again."""
        now = time.monotonic()
        with self._lock:  # one refresh at a time: concurrent callers then find fresh answers
            known = self.answers.get(task_id(arn))
            if known is not None:
                known.asked = now
                if known.final or now - known.at < fresh_for:
                    return known
            for key in [k for k, d in self.answers.items() if now - d.asked > FORGET_SECONDS]:
                del self.answers[key]
            stale = [
                d.arn
                for k, d in self.answers.items()
                if k != task_id(arn) and not d.final and now - d.asked < WATCHED_SECONDS and now - d.at >= fresh_for / 2
            ]
            arns = [arn, *stale[: DESCRIBE_BATCH - 1]]
            found = self._found(arns)
            return self._record(arns, found, time.monotonic())[0]

    def refresh(self, arns: list[str]) -> list[Described]:
        """Describe these tasks now (one call), update the shared answers and return them in order."""
        found = self._found(arns)
        now = time.monotonic()
        with self._lock:
            return self._record(arns, found, now)

    def _found(self, arns: list[str]) -> dict[str, dict[str, Any]]:
        return {task_id(str(t["taskArn"])): dict(t) for t in self._describe(arns)}

    def _record(self, arns: list[str], found: dict[str, dict[str, Any]], now: float) -> list[Described]:
        """Store the answers to one DescribeTasks call (the lock is held)."""
        results: list[Described] = []
        for arn in arns:
            key = task_id(arn)
            previous = self.answers.get(key)
            described = Described(
                arn=arn,
                task=found.get(key),
                at=now,
                asked=previous.asked if previous else now,
                missing_since=None if key in found else (previous.missing_since if previous else None) or now,
            )
            self.answers[key] = described
            results.append(described)
        return results
