"""Registration check, run in the version's own environment: ``python -m multinode._runtime.inspect OUT``.

Imports the tasks folder (the working directory) and writes its functions, or the import error, as
JSON to OUT (not stdout: the user's module may print while importing). The working directory is
Multinode's stored copy of the folder, so an error is reported as a path relative to it and a
traceback without the import machinery's frames: registration maps both back to the user's folder.

A process that main.py starts at import and that still runs once the import is over would start in
every container too: the check is a child subreaper (so that helpers that leave its session, or whose
parent ends, stay below it), kills every process left below it or in its process group after the
import, and reports them (``"leftover"``) for registration to refuse the version, naming them.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Any

from multinode._protocol import FunctionRecord
from multinode._runtime import loader
from multinode._runtime.loader import load_tasks
from multinode.errors import MultinodeError
from multinode.provisioner._local_shim import (
    become_subreaper,
    descendants,
    group_members,
    kill_leftovers,
    kill_tree,
)

_IMPORT_FRAMES = frozenset({__file__, loader.__file__, importlib.__file__})
"""Files of the frames that lead from this check into the user's main.py: noise in a traceback."""


LEFTOVER_KILL_TIMEOUT_SECONDS = 10.0
"""Longest the check keeps killing what main.py left running."""
LEFTOVER_SETTLE_SECONDS = 0.2
"""How long processes still running after the import get to end (or to exec their command) before they
count as left running."""


def main() -> int:
    out = Path(sys.argv[1])
    root = Path.cwd()
    become_subreaper()
    try:
        functions = load_tasks(root)
        records = [asdict(FunctionRecord(f.name, f.config, f.parameters())) for f in functions.values()]
        report: dict[str, Any] = {"functions": records}
    except BaseException as exc:  # report anything, SystemExit from user code included
        report = {"error": describe_error(exc, root)}
    report["leftover"] = stop_leftovers()
    out.write_text(json.dumps(report))
    return 0


def stop_leftovers() -> list[dict[str, Any]]:
    """The processes still running below this one or in its group (``pid``, ``command``), killed."""
    if not Path("/proc/self/stat").exists():
        return []  # not Linux: registration still kills the check's process group
    me = os.getpid()
    own = process_command(me)
    # Registration starts the check in a session of its own; run by hand, its group is the shell's.
    group = me if os.getpgid(0) == me else None

    def running() -> list[dict[str, Any]]:
        return [
            {"pid": pid, "command": command if command != own else "a fork of the import"}
            for pid in sorted({*descendants(me), *(group_members(group) if group is not None else [])})
            if (command := process_command(pid)) is not None
        ]

    if not running():
        return []
    time.sleep(LEFTOVER_SETTLE_SECONDS)  # a helper just started may still be on its way to its own command
    left = running()
    if group is not None:
        kill_leftovers(LEFTOVER_KILL_TIMEOUT_SECONDS)  # below it and in its group
    else:
        kill_tree(me, LEFTOVER_KILL_TIMEOUT_SECONDS)
    return left


def process_command(pid: int) -> str | None:
    """The command line of a live process (not a zombie), or None."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return None
    if state in ("Z", "X"):
        return None
    return " ".join(part.decode(errors="replace") for part in raw.rstrip(b"\0").split(b"\0")) or f"[{pid}]"


def describe_error(exc: BaseException, root: Path) -> dict[str, Any]:
    """Where in the tasks folder ``exc`` happened (the innermost frame there) and what it was."""
    frames = traceback.extract_tb(exc.__traceback__)
    inside = [f for f in frames if _inside(f.filename, root)]
    file, line = (inside[-1].filename, inside[-1].lineno) if inside else (None, None)
    if isinstance(exc, SyntaxError) and exc.filename and _inside(exc.filename, root):
        file, line = exc.filename, exc.lineno  # the broken file itself: it never got a frame
    missing = _missing_module(exc)
    return {
        "type": type(exc).__name__,
        "message": exc.msg if isinstance(exc, SyntaxError) else str(exc),
        "multinode": isinstance(exc, MultinodeError),
        "file": None if file is None else Path(file).relative_to(root).as_posix(),
        "line": line,
        "missing_module": missing,
        # False when an installed package (not the user's own line) made the failing import.
        "imported_directly": bool(frames) and _inside(frames[-1].filename, root),
        "root": str(root),
        "traceback": _format(exc, root),
    }


def _inside(filename: str, root: Path) -> bool:
    return Path(filename).is_absolute() and Path(filename).is_relative_to(root)


def _missing_module(exc: BaseException) -> str | None:
    """The top-level package a ModuleNotFoundError asked for, if it is not installed at all."""
    if not isinstance(exc, ModuleNotFoundError) or not exc.name:
        return None
    top = exc.name.partition(".")[0]
    try:
        found = importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        found = True
    # Found means a submodule is missing from a package that exists (possibly the user's own).
    return None if found else top


def _format(exc: BaseException, root: Path) -> str:
    formatted = traceback.TracebackException.from_exception(exc)
    stack = list(formatted.stack)
    while stack and (stack[0].filename in _IMPORT_FRAMES or stack[0].filename.startswith("<frozen importlib")):
        stack.pop(0)
    if isinstance(exc, MultinodeError):
        # A rejected decorator option: the user's line explains it, Multinode's frames below it do not.
        last = max((i for i, f in enumerate(stack) if _inside(f.filename, root)), default=None)
        if last is not None:
            stack = stack[: last + 1]
    formatted.stack = traceback.StackSummary.from_list(stack)
    return "".join(formatted.format())


if __name__ == "__main__":
    sys.exit(main())
