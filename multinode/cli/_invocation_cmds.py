"""Commands of ``mn`` on invocations (``invoke``, ``get``, ``cancel``, ``list``, ``logs``), on the one app."""

from __future__ import annotations

import itertools
import json
import re
import time
from datetime import datetime
from typing import Annotated, Any

import typer
from typer.core import TyperCommand, TyperOption

from multinode._vocabulary import InvocationStatus
from multinode.cli._common import (
    JsonOpt,
    ProjectOpt,
    _print_json,
    _run,
    _settings,
    _when,
    app,
    console,
    err_console,
)
from multinode.cli._display import print_invocations, show_invocation

# A JSON number below zero (Python's json also reads -Infinity), or a decimal written without its 0.
_NEGATIVE_NUMBER = re.compile(r"-(?:Infinity|(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)")


class _NegativeNumbersAsArguments(TyperCommand):
    """``mn invoke f -5``: the parser reads any word that starts with ``-`` as an option (and fails on
    ``-5``); here a negative number is an argument wherever it stands, as the user meant."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        value_options = {
            name
            for param in self.get_params(ctx)
            if isinstance(param, TyperOption) and not param.is_flag and not param.count
            for name in param.opts
        }
        return super().parse_args(ctx, _numbers_as_arguments(args, value_options))


def _numbers_as_arguments(args: list[str], value_options: set[str]) -> list[str]:
    """The same words, options (with their values) first, then ``--`` and the arguments in their order,
    so that the parser takes no argument for an option. Unchanged when no word is a negative number."""
    if not any(_NEGATIVE_NUMBER.fullmatch(word) for word in args):
        return args
    options: list[str] = []
    arguments: list[str] = []
    words = iter(args)
    for word in words:
        if word == "--":
            arguments.extend(words)
        elif _NEGATIVE_NUMBER.fullmatch(word) or not word.startswith("-") or word == "-":
            arguments.append(word)
        else:
            options.append(word)
            if _takes_next_word(word, value_options):
                options.extend(itertools.islice(words, 1))
    return [*options, "--", *arguments]


def _takes_next_word(option: str, value_options: set[str]) -> bool:
    if option.startswith("--"):
        return option in value_options  # --name=value holds its value
    # Short options cluster (-fp NAME): the first that takes a value takes the rest of the word, if any.
    for end, letter in enumerate(option[1:], start=2):
        if f"-{letter}" in value_options:
            return end == len(option)
    return False


def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@app.command(cls=_NegativeNumbersAsArguments)
def invoke(
    function: Annotated[str, typer.Argument(help="Function name.")],
    args: Annotated[
        list[str] | None,  # noqa: UP007
        typer.Argument(help="Arguments, each read as JSON if it parses (negative numbers too: -5)."),
    ] = None,
    project: ProjectOpt = ...,  # type: ignore[assignment]
    wait: Annotated[bool, typer.Option("--wait", "--follow", "-f", help="Wait and show progress.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Start an invocation; prints its id (with --follow, waits and prints the result)."""
    from multinode import get_deployed_function

    fn = get_deployed_function(project, function, settings=_settings())
    invocation_id = fn.start(*[_parse_arg(a) for a in args or []])
    if not wait:
        _print_json({"invocation_id": invocation_id}) if as_json else print(invocation_id)
        return
    out = err_console if as_json else console  # with --json, stdout holds only the JSON
    out.print(f"Invocation {invocation_id}")
    last_status = None
    with out.status(InvocationStatus.PENDING.value) as status:
        while True:
            inv = fn.get(invocation_id)
            text = f"{inv.status.value}" + (f"  progress: {inv.result!r}" if inv.result is not None else "")
            status.update(text)
            if inv.status != last_status:
                out.print(f"{_when(datetime.now())}  {inv.status.value}")
                last_status = inv.status
            if inv.status.is_final:
                break
            time.sleep(0.5)
    show_invocation(inv, as_json)
    if inv.status != InvocationStatus.SUCCEEDED:
        raise typer.Exit(1)


@app.command()
def get(
    invocation_id: Annotated[str, typer.Argument(help="Invocation id.")],
    as_json: JsonOpt = False,
) -> None:
    """Show an invocation: status, result or error, and every execution."""
    from multinode.control_plane.admin import get_invocation

    show_invocation(_run(get_invocation(_settings(), invocation_id)), as_json)


@app.command()
def cancel(invocation_id: Annotated[str, typer.Argument(help="Invocation id.")]) -> None:
    """Cancel an invocation (a no-op if it already ended)."""
    from multinode.control_plane.admin import cancel_invocation

    _run(cancel_invocation(_settings(), invocation_id))
    console.print(f"Cancellation requested for {invocation_id}.")


@app.command("list")
def list_(
    function: Annotated[str, typer.Argument(help="Function name.")],
    project: ProjectOpt,
    status: Annotated[str | None, typer.Option(help="Only this status, e.g. RUNNING.")] = None,  # noqa: UP007
    offset: Annotated[str | None, typer.Option(help="Offset printed by the previous page.")] = None,  # noqa: UP007
    as_json: JsonOpt = False,
) -> None:
    """List a function's invocations, newest first (50 per page)."""
    from multinode.control_plane.admin import list_invocations

    page, invocations = _run(list_invocations(_settings(), project, function, offset, status))
    if as_json:
        _print_json({"invocations": invocations, "offset": page.offset})
        return
    print_invocations(invocations)
    if page.offset:
        console.print(f"More: --offset {page.offset}")


@app.command()
def logs(
    invocation_id: Annotated[str, typer.Argument(help="Invocation id.")],
    execution: Annotated[str | None, typer.Option(help="One execution id (default: the latest).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the invocation ends.")] = False,
) -> None:
    """Print what an invocation's code printed (stdout and stderr)."""
    from multinode.control_plane.admin import print_logs

    _run(print_logs(_settings(), invocation_id, execution, follow))
