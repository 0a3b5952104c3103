"""Commands of ``mn``. Each prints a table for people and, with ``--json``, JSON for scripts."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import threading
import time
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

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


def _serve_until_signalled(settings: MultinodeSettings) -> None:
    """Run a control-plane worker until SIGINT (Ctrl-C) or SIGTERM, then shut it down cleanly."""
    from multinode._worker import run_worker

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        started = threading.Event()
        worker = asyncio.ensure_future(run_worker(settings, stop, started))
        while not started.is_set() and not worker.done():
            await asyncio.sleep(0.05)
        if started.is_set():
            console.print(f"Control-plane worker ready on task queue {settings.task_queue!r}. Ctrl-C stops it.")
        await worker

    asyncio.run(serve())
    console.print("Stopped.")


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
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _print_json(value: Any) -> None:
    print(json.dumps(_jsonable(value), indent=2))


def _when(value: datetime | None) -> str:
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S") if value else "-"


def _duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "-"
    seconds = ((end or datetime.now(start.tzinfo)) - start).total_seconds()
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


# --- local stack --------------------------------------------------------------------------------


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="gRPC port of the embedded Temporal server.")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Port of the Temporal Web UI.")] = 8233,
) -> None:
    """Run the local stack: the embedded Temporal dev server (with Web UI) and a control-plane worker."""
    from multinode._devserver import DevServer, port_open

    settings = _settings()
    server = None
    host, _, port_text = settings.temporal_address.rpartition(":")
    if port_text == str(port) and port_open(host or "127.0.0.1", port):
        console.print(f"Using the Temporal server already running at {settings.temporal_address}.")
    else:
        settings = settings.model_copy(
            update={"temporal_profile": {**settings.temporal_profile, "address": f"127.0.0.1:{port}"}}
        )
        server = DevServer(
            port=port, ui_port=ui_port, db_file=settings.home / "temporal.db", log_file=settings.home / "temporal.log"
        )
        with console.status("Starting the Temporal dev server..."):
            server.start()
        console.print(f"Temporal dev server at 127.0.0.1:{port}, Web UI at http://localhost:{ui_port}")
    try:
        _serve_until_signalled(settings)
    finally:
        if server is not None:
            server.stop()


@app.command()
def worker() -> None:
    """Run a control-plane worker against the configured Temporal (TEMPORAL_ADDRESS, ...)."""
    settings = _settings()
    console.print(
        f"Control-plane worker: {settings.temporal_address}, namespace {settings.temporal_namespace!r}, "
        f"task queue {settings.task_queue!r}, provisioner {settings.provisioner!r}."
    )
    _serve_until_signalled(settings)


# --- registry -----------------------------------------------------------------------------------


@app.command()
def register(
    path: Annotated[Path, typer.Argument(help="The tasks folder (it holds main.py).")],
    project: ProjectOpt,
    provisioner: Annotated[
        str | None, typer.Option(help="Container backend: local or fargate (default: MULTINODE_PROVISIONER).")
    ] = None,
    image: Annotated[
        str | None, typer.Option(help="fargate: an image built elsewhere from `mn build-context`, instead of Docker.")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a tasks folder as a new version of a project; prints the version id."""
    from multinode._registration import register_async

    with console.status(f"Registering {path} as project {project!r}..."):
        record = _run(register_async(path, project, _settings(), provisioner=provisioner, image=image))
    if as_json:
        _print_json({"project": project, "version_id": record.version_id, "functions": sorted(record.functions)})
    else:
        print(record.version_id)


@app.command("build-context")
def build_context(
    path: Annotated[Path, typer.Argument(help="The tasks folder (it holds main.py).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the Docker build context to.")],
) -> None:
    """Write the Docker build context of a version's image (for CI: `docker build OUT`); prints a tag."""
    from multinode._registration import check_tasks_folder
    from multinode.provisioner.image import write_build_context

    digest = write_build_context(check_tasks_folder(path), out)
    print(digest[:16])


@app.command()
def projects(as_json: JsonOpt = False) -> None:
    """List the registered projects."""
    from multinode._client import get_client
    from multinode._registry import list_projects

    async def go() -> list[str]:
        return await list_projects(await get_client(_settings()))

    names = _run(go())
    if as_json:
        _print_json(names)
    elif not names:
        console.print("No projects yet: `mn register PATH --project NAME`.")
    else:
        for name in names:
            print(name)


@app.command()
def describe(
    target: Annotated[str, typer.Argument(help="A project name, or an invocation id (inv-...).")],
    function: Annotated[str | None, typer.Argument(help="A function of the project.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Describe a project (versions, functions), a function (config, recent invocations) or an invocation."""
    from multinode._admin import get_invocation
    from multinode._client import get_client
    from multinode._registry import read_project

    if target.startswith("inv-") and function is None:
        _show_invocation(_run(get_invocation(_settings(), target)), as_json)
        return

    async def go() -> Any:
        return await read_project(await get_client(_settings()), target)

    state = _run(go())
    latest = state.versions[-1]
    if function is not None:
        _describe_function(target, latest, function, as_json)
        return
    if as_json:
        _print_json(state)
        return
    table = Table(title=f"Project {target}")
    for column in ("version", "created", "functions"):
        table.add_column(column)
    for record in reversed(state.versions):
        created = _when(datetime.fromisoformat(record.created_at))
        table.add_row(record.version_id, created, ", ".join(sorted(record.functions)))
    console.print(table)


def _describe_function(project: str, latest: Any, function: str, as_json: bool) -> None:
    from multinode._admin import list_invocations
    from multinode.errors import FunctionNotFoundError

    record = latest.functions.get(function)
    if record is None:
        raise FunctionNotFoundError(project, latest.version_id, function, list(latest.functions))
    _, recent = _run(list_invocations(_settings(), project, function, None, None))
    if as_json:
        _print_json({"project": project, "version_id": latest.version_id, "function": record, "recent": recent})
        return
    config = record.config
    params = ", ".join(p.name for p in record.parameters)
    console.print(f"[bold]{project}.{function}[/]({params})  version {latest.version_id}")
    console.print(
        f"cpu {config.cpu:g}, memory {config.memory_mib} MiB, timeout {config.timeout}, "
        f"max_concurrency {config.max_concurrency}, max_retries {config.max_retries}"
        + (", generator (yields progress)" if config.is_generator else "")
    )
    _print_invocations(recent[:10], title="recent invocations")


@app.command()
def delete(
    project: Annotated[str, typer.Argument(help="Project name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Cancel a project's in-flight invocations and remove it from the registry."""
    from multinode._admin import delete_project_and_invocations

    if not yes:
        typer.confirm(f"Delete project {project!r} and cancel its running invocations?", abort=True)
    cancelled = _run(delete_project_and_invocations(_settings(), project))
    console.print(f"Deleted project {project!r}; cancelled {cancelled} in-flight invocation(s).")


# --- invocations --------------------------------------------------------------------------------


def _parse_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@app.command()
def invoke(
    function: Annotated[str, typer.Argument(help="Function name.")],
    args: Annotated[list[str] | None, typer.Argument(help="Arguments, each read as JSON if it parses.")] = None,  # noqa: UP007
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
    with out.status("PENDING") as status:
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
    _show_invocation(inv, as_json)
    if inv.status.value != "SUCCEEDED":
        raise typer.Exit(1)


def _print_invocations(invocations: list[Any], title: str | None = None) -> None:
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


def _show_invocation(inv: Any, as_json: bool) -> None:
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


@app.command()
def get(
    invocation_id: Annotated[str, typer.Argument(help="Invocation id.")],
    as_json: JsonOpt = False,
) -> None:
    """Show an invocation: status, result or error, and every execution."""
    from multinode._admin import get_invocation

    _show_invocation(_run(get_invocation(_settings(), invocation_id)), as_json)


@app.command()
def cancel(invocation_id: Annotated[str, typer.Argument(help="Invocation id.")]) -> None:
    """Cancel an invocation (a no-op if it already ended)."""
    from multinode._admin import cancel_invocation

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
    from multinode._admin import list_invocations

    page, invocations = _run(list_invocations(_settings(), project, function, offset, status))
    if as_json:
        _print_json({"invocations": invocations, "offset": page.offset})
        return
    _print_invocations(invocations)
    if page.offset:
        console.print(f"More: --offset {page.offset}")


@app.command()
def logs(
    invocation_id: Annotated[str, typer.Argument(help="Invocation id.")],
    execution: Annotated[str | None, typer.Option(help="One execution id (default: the latest).")] = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the invocation ends.")] = False,
) -> None:
    """Print what an invocation's code printed (stdout and stderr)."""
    from multinode._admin import print_logs

    _run(print_logs(_settings(), invocation_id, execution, follow))
