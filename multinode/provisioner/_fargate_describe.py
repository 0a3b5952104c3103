"""DescribeTasks answers shared by every ``status`` call, refreshed in batches.

The control plane watches every running container with ``status``. DescribeTasks is rate-limited per
account, so a stale answer is refreshed together with every other watched task whose answer is getting
old, up to 100 per call, and the call rate stays about the same however many containers run.

No lock is held across a call. At most :data:`DESCRIBE_CALLS` calls run at once; a caller that needs a
fresh answer while they all run waits (outside the lock), and the callers that waited are described
together in the next call: a burst of new tasks costs a few calls, not one each.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

DESCRIBE_BATCH = 100
"""Most tasks one DescribeTasks call describes."""
WATCHED_SECONDS = 60.0
"""A task whose status was asked for within this long is refreshed along with the others."""
FORGET_SECONDS = 3600.0
"""Cached descriptions not asked for within this long are dropped."""
DESCRIBE_CALLS = 4
"""DescribeTasks calls one provisioner makes at once. More would only spend the account's DescribeTasks
rate sooner: 4 calls of 100 tasks cover thousands of watched tasks a second."""


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
    :data:`DESCRIBE_BATCH` task ARNs and returns the tasks ECS knows.

    Thread-safe. A refresh in flight is a future that every caller wanting one of its tasks waits for
    (one flight per task at a time). A failed refresh fails its waiters with the same error and leaves
    nothing behind: the callers still waiting, and the next ones, try again."""

    def __init__(self, describe: Callable[[list[str]], list[dict[str, Any]]]) -> None:
        self._describe = describe
        self._lock = threading.Lock()
        self._flight_over = threading.Condition(self._lock)
        self.answers: dict[str, Described] = {}
        """task id -> its latest DescribeTasks answer."""
        self._flights: dict[str, Future[dict[str, Described]]] = {}
        """task id -> the refresh in flight that describes it; its result: the answers by task id."""
        self._flying = 0
        self._pending: dict[str, str] = {}
        """task id -> ARN of tasks whose callers wait for a call to be free, for the next refresh."""
        self.waiting = 0
        """Callers waiting now for a refresh (for tests and diagnosis)."""

    def recent(self, arn: str, fresh_for: float) -> Described:
        """A description of a task at most ``fresh_for`` seconds old. A stale one is refreshed along with
        the other watched tasks; STOPPED is final and never described again."""
        key = task_id(arn)
        with self._lock:
            while True:
                now = time.monotonic()
                known = self.answers.get(key)
                if known is not None:
                    known.asked = now
                    if known.final or now - known.at < fresh_for:
                        return known
                joined = self._flights.get(key)
                if joined is not None:
                    self.waiting += 1
                    break
                self._pending.setdefault(key, arn)
                if self._flying < DESCRIBE_CALLS:
                    arns, flight = self._take_off(key, now, fresh_for)
                    break
                self.waiting += 1
                try:
                    self._flight_over.wait()  # releases the lock until a call ends
                finally:
                    self.waiting -= 1
        if joined is not None:
            try:
                return joined.result()[key]  # or the refresh's error
            finally:
                with self._lock:
                    self.waiting -= 1
        return self._fly(arns, flight)[0]

    def _take_off(self, key: str, now: float, fresh_for: float) -> tuple[list[str], Future[dict[str, Described]]]:
        """Start a refresh (the lock is held): this caller's task, the tasks waiting for one, then other
        watched tasks whose answers are getting old."""
        arns = [self._pending.pop(key)]
        for other in list(self._pending)[: DESCRIBE_BATCH - 1]:
            arns.append(self._pending.pop(other))
        if len(arns) < DESCRIBE_BATCH:
            arns.extend(self._stale({task_id(a) for a in arns}, now, fresh_for)[: DESCRIBE_BATCH - len(arns)])
        flight: Future[dict[str, Described]] = Future()
        for described in arns:
            self._flights[task_id(described)] = flight
            self._pending.pop(task_id(described), None)
        self._flying += 1
        return arns, flight

    def _fly(self, arns: list[str], flight: Future[dict[str, Described]]) -> list[Described]:
        """Make the refresh's call (no lock held) and hand its answers to its waiters."""
        try:
            found = self._found(arns)
        except BaseException as exc:
            self._land(arns, flight, None)
            flight.set_exception(exc)
            raise
        results = self._land(arns, flight, found)
        flight.set_result({task_id(d.arn): d for d in results})
        return results

    def _land(
        self, arns: list[str], flight: Future[dict[str, Described]], found: dict[str, dict[str, Any]] | None
    ) -> list[Described]:
        """The refresh is over: store its answers (unless it failed) and let waiting callers go on."""
        with self._lock:
            results = [] if found is None else self._record(arns, found, time.monotonic())
            for arn in arns:
                if self._flights.get(task_id(arn)) is flight:
                    del self._flights[task_id(arn)]
            self._flying -= 1
            self._flight_over.notify_all()
        return results

    def _stale(self, skip: set[str], now: float, fresh_for: float) -> list[str]:
        """Other watched tasks worth describing in the same call (the lock is held); drops answers
        nobody asked for in a long time."""
        for old in [k for k, d in self.answers.items() if now - d.asked > FORGET_SECONDS]:
            del self.answers[old]
        return [
            d.arn
            for k, d in self.answers.items()
            if k not in skip
            and k not in self._flights
            and not d.final
            and now - d.asked < WATCHED_SECONDS
            and now - d.at >= fresh_for / 2
        ]

    def refresh(self, arns: list[str]) -> list[Described]:
        """Describe these tasks now (one call), update the shared answers and return them in order."""
        found = self._found(arns)
        now = time.monotonic()
        with self._lock:
            return self._record(arns, found, now)

    def last_status(self, arn: str) -> str:
        """The task's ``lastStatus`` in its latest answer, for messages."""
        with self._lock:
            known = self.answers.get(task_id(arn))
        if known is None:
            return "not described"
        return str(known.task.get("lastStatus")) if known.task is not None else "not visible"

    def expire(self, arn: str) -> None:
        """Make the task's answer stale (it changed, e.g. by StopTask): its next ``recent`` describes it."""
        with self._lock:
            known = self.answers.get(task_id(arn))
            if known is not None and not known.final:
                known.at = float("-inf")

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
