"""What every ``mn`` command module shares: the typer app, the consoles, common options, and printing."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
from datetime import datetime
from enum import Enum
from typing import Annotated, Any

import typer
from rich.console import Console

from multinode._settings import MultinodeSettings

app = typer.Typer(
    name="mn",
    help="Multinode: run long asynchronous Python tasks, each in its own container, on Temporal.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
ProjectOpt = Annotated[str, typer.Option("--project", "-p", envvar="MULTINODE_PROJECT", help="Project name.")]


def _settings() -> MultinodeSettings:
    return MultinodeSettings.from_env()


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(value).items()}
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, float) and not math.isfinite(value):
        # JSON has no NaN or infinities: print their names, as strings, rather than invalid JSON.
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), indent=2, allow_nan=False))


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    seconds = ((end or datetime.now(start.tzinfo)) - start).total_seconds()
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"
