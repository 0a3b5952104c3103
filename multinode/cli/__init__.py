"""The ``mn`` command line: one typer app and a single error boundary."""

from __future__ import annotations

import sys

from multinode.cli._app import app


def main() -> None:
    from multinode.errors import MultinodeError

    try:
        app(standalone_mode=False)
    except MultinodeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click's own usage errors are handled below
        import click

        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)


__all__ = ["app", "main"]
