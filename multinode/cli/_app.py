"""Commands of ``mn`` for the local stack, registration and projects. Each prints a table for people and,
with ``--json``, JSON for scripts."""

from __future__ import annotations

import asyncio
import signal
import threading
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from multinode._settings import MultinodeSettings
from multinode.cli._common import JsonOpt, ProjectOpt, _print_json, _run, _settings, _when, app, console, err_console
from multinode.cli._display import print_invocations, show_invocation

if TYPE_CHECKING:
    from multinode.control_plane.codec_server import CodecServer

LOCAL_PROBE_SECONDS = 3.0
"""How long `mn dev` waits for a program on its local port to answer as a Temporal server."""


def _serve_until_signalled(settings: MultinodeSettings) -> None:
    """Run a control-plane worker until SIGINT (Ctrl-C) or SIGTERM, then shut it down cleanly."""
    from multinode._credentials import make_undumpable
    from multinode.control_plane.worker import run_worker

    make_undumpable()  # it holds the Temporal credentials: user code of the same OS user cannot read them

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


# --- local stack --------------------------------------------------------------------------------


@app.command()
def dev(
    port: Annotated[int, typer.Option(help="gRPC port of the embedded Temporal server.")] = 7233,
    ui_port: Annotated[int, typer.Option(help="Port of the Temporal Web UI.")] = 8233,
    codec_server: Annotated[
        bool,
        typer.Option(
            "--codec-server",
            help="With MULTINODE_ENCRYPTION_KEYS: also serve a codec server on 127.0.0.1 so that the Web UI "
            "shows payloads decrypted (any local process could then decrypt through it).",
        ),
    ] = False,
) -> None:
    """Run the local stack: the embedded Temporal dev server (with Web UI) and a control-plane worker."""
    from multinode.control_plane.devserver import DevServer

    settings = _settings()
    server = codec = None
    running = _running_temporal(settings, port)
    if running is not None:
        settings = running
        console.print(f"Using the Temporal server already running at {settings.temporal_address}.")
    else:
        settings = _at_address(settings, f"127.0.0.1:{port}")
        codec = _start_codec_server(settings, ui_port) if codec_server else None
        server = DevServer(
            port=port,
            ui_port=ui_port,
            db_file=settings.home / "temporal.db",
            log_file=settings.home / "temporal.log",
            ui_codec_endpoint=codec.url if codec is not None else None,
        )
        with console.status("Starting the Temporal dev server..."):
            server.start()
        console.print(f"Temporal dev server at 127.0.0.1:{port}, Web UI at http://localhost:{ui_port}")
        if codec is not None:
            console.print(f"Payloads are encrypted; the Web UI decrypts them through {codec.url}.")
    try:
        _serve_until_signalled(settings)
    finally:
        if server is not None:
            server.stop()
        if codec is not None:
            codec.stop()


def _start_codec_server(settings: MultinodeSettings, ui_port: int) -> CodecServer:
    """A codec server on a free local port for the embedded Web UI."""
    from multinode._codec import ENV_ENCRYPTION_KEYS, EncryptionCodec, parse_keys
    from multinode.control_plane.codec_server import CodecServer
    from multinode.errors import ConfigurationError

    keys = parse_keys(settings.encryption_keys.get_secret_value())
    if not keys:
        raise ConfigurationError(
            f"--codec-server decrypts payloads for the Web UI: set {ENV_ENCRYPTION_KEYS} (run `mn encryption-key`).",
            parameter=ENV_ENCRYPTION_KEYS,
        )
    codec = EncryptionCodec(keys, accept_plain=True)  # it only shows them
    return CodecServer(codec, origins=(f"http://localhost:{ui_port}", f"http://127.0.0.1:{ui_port}")).start()


def _at_address(settings: MultinodeSettings, address: str) -> MultinodeSettings:
    return settings.model_copy(update={"temporal_profile": {**settings.temporal_profile, "address": address}})


def _running_temporal(settings: MultinodeSettings, port: int) -> MultinodeSettings | None:
    """Settings for the Temporal server that already listens on the port (TEMPORAL_ADDRESS's, else a local
    one), to reuse; None when nothing listens. Another program on the local port fails at once, naming it,
    rather than after the dev server's start timeout."""
    from multinode._client import CONNECT_TIMEOUT_SECONDS, connect, is_local_address
    from multinode.control_plane.devserver import port_in_use_error, port_open
    from multinode.errors import TemporalUnreachableError

    candidates = [_at_address(settings, f"127.0.0.1:{port}")]
    if settings.temporal_address.rpartition(":")[2] == str(port):
        candidates.insert(0, settings)  # with its TLS settings
    for candidate in candidates:
        host = candidate.temporal_address.rpartition(":")[0].strip("[]") or "127.0.0.1"
        if not port_open(host, port):
            continue
        local = is_local_address(candidate.temporal_address)
        try:
            # A local server answers in milliseconds; a program that is not one may never answer.
            _run(connect(candidate, timeout=LOCAL_PROBE_SECONDS if local else CONNECT_TIMEOUT_SECONDS))
        except TemporalUnreachableError as exc:
            if not local:
                raise
            raise port_in_use_error(port, ui=False, why=f"not a Temporal server: {exc.cause}") from exc
        return candidate
    return None


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
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="On failure, print the full traceback (or uv's output) too.")
    ] = False,
) -> None:
    """Upload a tasks folder as a new version of a project; prints the version id."""
    from multinode.control_plane.registration import register_async
    from multinode.errors import InvalidTasksFolderError

    try:
        with console.status(f"Registering {path} as project {project!r}..."):
            record = _run(register_async(path, project, _settings(), provisioner=provisioner, image=image))
    except InvalidTasksFolderError as exc:
        if verbose and exc.details:
            # Above the one-line error the CLI prints last, as Python puts a traceback above its error.
            err_console.print(exc.details, markup=False, highlight=False, soft_wrap=True)
        raise
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
    from multinode.artifacts.image import write_build_context
    from multinode.control_plane.registration import check_tasks_folder

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
    from multinode._client import get_client
    from multinode._registry import read_project
    from multinode.control_plane.admin import get_invocation

    if target.startswith("inv-") and function is None:
        show_invocation(_run(get_invocation(_settings(), target)), as_json)
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
    from multinode.control_plane.admin import list_invocations
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

    print_invocations(recent[:10], title="recent invocations")


@app.command()
def delete(
    project: Annotated[str, typer.Argument(help="Project name.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Cancel a project's in-flight invocations and remove it from the registry."""
    from multinode.control_plane.admin import delete_project_and_invocations

    if not yes:
        typer.confirm(f"Delete project {project!r} and cancel its running invocations?", abort=True)
    cancelled = _run(delete_project_and_invocations(_settings(), project))
    console.print(f"Deleted project {project!r}; cancelled {cancelled} in-flight invocation(s).")
