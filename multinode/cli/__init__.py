"""The ``mn`` command line: one typer app and a single error boundary."""

from __future__ import annotations

import os
import sys

from multinode.cli._common import app

# Each registers its commands on ``app``, in the order of `mn --help`.
# isort: off
from multinode.cli import _app  # noqa: F401
from multinode.cli import _invocation_cmds  # noqa: F401
from multinode.cli import _codec_cmds  # noqa: F401

# isort: on


def main() -> None:
    code = _run()
    # Leave without interpreter teardown: Temporal's native client threads can crash a finalizing
    # interpreter (seen as SIGABRT under load), and a CLI has nothing left to clean up.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run() -> int:
    """Run the app; the single error boundary: one line on stderr and a non-zero exit code.

    typer's standalone mode handles what its own (vendored) click raises: a usage error prints the usage
    line and message (exit 2), a declined prompt prints "Aborted" (exit 1), ``typer.Exit`` and Ctrl-C
    give their codes; it ends with ``SystemExit`` every time. Our own errors pass through it."""
    from multinode.errors import MultinodeError

    try:
        app()
    except SystemExit as exc:
        return _exit_code(exc.code)
    except MultinodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def _exit_code(code: str | int | None) -> int:
    if code is None or isinstance(code, int):
        return code or 0
    print(code, file=sys.stderr)  # sys.exit("message") means: print it, fail
    return 1


__all__ = ["app", "main"]
