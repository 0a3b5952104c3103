"""Tables of invocations, shared by the invocation commands and ``mn describe``."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from multinode.cli._common import _duration, _print_json, _when, console


def print_invocations(invocations: list[Any], title: str | None = None) -> None:
    table = Table(title=title)
    for column in ("invocation", "status", "created", "duration", "progress / result"):
        table.add_column(column)
    for inv in invocations:
        table.add_row(
            inv.invocation_id,
            inv.status.value,
            _when(inv.created_at),
            _duration(inv.started_at, inv.finished_at),
            "" if inv.result is None else repr(inv.result)[:60],
        )
    console.print(table)


def show_invocation(inv: Any, as_json: bool) -> None:
    if as_json:
        _print_json(inv)
        return
    console.print(f"[bold]{inv.invocation_id}[/]  {inv.project_name}.{inv.function_name} ({inv.version_id})")
    console.print(f"status      {inv.status.value}   terminated {inv.terminated}")
    console.print(
        f"created     {_when(inv.created_at)}   started {_when(inv.started_at)}   finished {_when(inv.finished_at)}"
    )
    if inv.parent_invocation_id:
        console.print(f"parent      {inv.parent_invocation_id}")
    waiting = next((e.waiting_for_capacity for e in inv.executions if e.waiting_for_capacity), None)
    if waiting:
        console.print(f"waiting     for capacity: {waiting}", markup=False, highlight=False)
    console.print(f"result      {inv.result!r}")
    if inv.error:
        console.print(f"error       {inv.error}")
        if inv.error.traceback:
            console.print(inv.error.traceback, markup=False, highlight=False)
    table = Table(title=f"executions ({inv.num_failed_attempts} failed)")
    for column in ("attempt", "execution", "status", "started", "duration", "error"):
        table.add_column(column)
    for e in inv.executions:
        table.add_row(
            str(e.attempt),
            e.execution_id,
            e.status.value,
            _when(e.started_at),
            _duration(e.started_at, e.finished_at),
            str(e.error or ""),
        )
    console.print(table)
