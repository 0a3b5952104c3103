"""The ``mn`` command line: one typer app and a single error boundary."""

from __future__ import annotations

import os
import sys

from multinode.cli._app import app


def main() -> None:
    code = _run()
    # Leave without interpreter teardown: Temporal's native client threads can crash a finalizing
    # interpreter (seen as SIGABRT under load), and a CLI has nothing left to clean up.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run() -> int:
    """Run the app; the single error boundary: one line on stderr and a non-zero exit code."""
    import click

    from multinode.errors import MultinodeError

    try:
        result = app(standalone_mode=False)
    except MultinodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, click.exceptions.Abort):
        return 130
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except Exception as exc:
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) else 0


__all__ = ["app", "main"]
