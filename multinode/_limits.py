"""Limits on the names Multinode builds Temporal ids from, and the checks that enforce them.

Project and function names reach Temporal in three ways: inside workflow ids
(``multinode-project:PROJECT``, ``multinode-quota:PROJECT:FUNCTION``), as values of Keyword search
attributes (``MultinodeProject``, ``MultinodeFunction``), and inside visibility queries (``.list()``,
``mn list``, ``mn delete``). A name that breaks any of them must be refused where it is given — at
decoration, at registration, at an SDK or CLI call — never once an invocation is waiting on it (a quota
workflow that Temporal refuses to start leaves its invocations PENDING for ever).

Every limit is in UTF-8 bytes, as Temporal counts; for ASCII names a byte is a character.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from multinode._protocol import QUOTA_WORKFLOW_ID_PREFIX, quota_workflow_id
from multinode.errors import ConfigurationError, InvalidTasksFolderError, ValidationError

MAX_TEMPORAL_ID_BYTES = 255
"""Longest workflow id or task queue name Multinode starts or polls, in UTF-8 bytes.

Temporal's own limit (``limit.maxIDLength``) is 1,000 by default, which the ``mn dev`` server keeps; but
with SQL persistence (PostgreSQL or MySQL, as in ``docker-compose.temporal.yml``) ids are stored in
``VARCHAR(255)`` columns, and Temporal's compose files (and ``deploy/temporal/dynamicconfig``) lower the
limit to 255. Holding every id to 255 means a name accepted on ``mn dev`` also works in production."""

MAX_KEYWORD_BYTES = 255
"""Longest value of a Keyword search attribute (project, function, version, status, parent), in UTF-8
bytes. Temporal's default limit per value is 2 KB (``limit.searchAttributesSizeOfValue``), but SQL
visibility stores custom Keyword attributes in ``VARCHAR(255)`` columns."""

MAX_TASK_QUEUE_BYTES = MAX_TEMPORAL_ID_BYTES
"""Longest control-plane task queue name (``MULTINODE_TASK_QUEUE``): Temporal limits task queue names
like workflow ids."""

MAX_PROJECT_NAME_LENGTH = 100
"""Longest project name. Project names are ASCII (letters, digits, ``-``, ``_``, ``.``), so this is
characters and bytes alike; ``multinode-project:NAME`` then always fits in ``MAX_TEMPORAL_ID_BYTES``."""

MAX_FUNCTION_NAME_LENGTH = 200
"""Longest function name (a Python identifier), in UTF-8 bytes: it is a Keyword search attribute value
(at most ``MAX_KEYWORD_BYTES``) and part of its quota workflow id, checked with the project name by
``MAX_PROJECT_AND_FUNCTION_LENGTH``."""

MAX_PROJECT_AND_FUNCTION_LENGTH = MAX_TEMPORAL_ID_BYTES - len(QUOTA_WORKFLOW_ID_PREFIX) - len(":")
"""Longest project name and function name together (238 bytes): a function's concurrency quota is the
workflow ``multinode-quota:PROJECT:FUNCTION``, which must fit in ``MAX_TEMPORAL_ID_BYTES``."""

_PROJECT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


def name_size(name: str) -> int:
    """How Temporal measures a name: UTF-8 bytes."""
    return len(name.encode("utf-8", "surrogatepass"))


def _size_text(name: str) -> str:
    size = name_size(name)
    return f"{size:,} characters" if name.isascii() else f"{size:,} bytes in UTF-8"


def _shown(name: str, keep: int = 40) -> str:
    """A name as errors quote it: a long one cut, so that the message stays one readable line."""
    return repr(name) if len(name) <= keep else repr(name[:keep]) + f"... ({_size_text(name)})"


def check_project_name(name: object) -> str:
    """``name`` if it is a valid project name, else ``ValidationError`` saying what a valid one is."""
    if not isinstance(name, str) or not _PROJECT_NAME.fullmatch(name) or len(name) > MAX_PROJECT_NAME_LENGTH:
        too_long = isinstance(name, str) and len(name) > MAX_PROJECT_NAME_LENGTH
        shown = _shown(name) if isinstance(name, str) else repr(name)
        raise ValidationError(
            f"Project name {shown} is not valid"
            + (f" (over the limit of {MAX_PROJECT_NAME_LENGTH} characters)" if too_long else "")
            + f": use 1-{MAX_PROJECT_NAME_LENGTH} letters, digits, '-', '_' or '.', starting with a letter or digit."
        )
    return name


def check_function_name(name: object) -> str:
    """``name`` if it can name a function (a Python identifier within ``MAX_FUNCTION_NAME_LENGTH``)."""
    if not isinstance(name, str) or not name.isidentifier():
        shown = _shown(name) if isinstance(name, str) else repr(name)
        raise ValidationError(
            f"Function name {shown} is not valid: a function is named by its Python name (`def name(...)`: "
            "letters, digits and '_', not starting with a digit)."
        )
    if name_size(name) > MAX_FUNCTION_NAME_LENGTH:
        raise ValidationError(
            f"Function name {_shown(name)} is over the limit of {MAX_FUNCTION_NAME_LENGTH} characters "
            f"(UTF-8 bytes): Temporal ids and search attributes are built from it. Rename the function to at "
            f"most {MAX_FUNCTION_NAME_LENGTH} characters."
        )
    return name


def combination_problem(project_name: str, function_name: str) -> str | None:
    """Why a valid project name and a valid function name do not fit together, or None."""
    together = name_size(project_name) + name_size(function_name)
    if together <= MAX_PROJECT_AND_FUNCTION_LENGTH:
        return None
    room = MAX_PROJECT_AND_FUNCTION_LENGTH - name_size(project_name)
    quota_id_size = name_size(quota_workflow_id(project_name, function_name))
    return (
        f"function {_shown(function_name)} of project {_shown(project_name)}: the two names take {together} "
        f"characters (UTF-8 bytes) together, over the limit of {MAX_PROJECT_AND_FUNCTION_LENGTH} (the function's "
        f"concurrency quota is the Temporal workflow '{QUOTA_WORKFLOW_ID_PREFIX}PROJECT:FUNCTION', "
        f"{quota_id_size} bytes, at most {MAX_TEMPORAL_ID_BYTES}). Rename the function to at most {room} "
        "characters, or use a shorter project name."
    )


def check_names(project_name: object, function_name: object) -> None:
    """Both names valid, and the function's quota workflow id within Temporal's limit."""
    project = check_project_name(project_name)
    function = check_function_name(function_name)
    problem = combination_problem(project, function)
    if problem is not None:
        raise ValidationError(problem[:1].upper() + problem[1:])


def check_registered_names(project_name: str, function_names: Iterable[str], shown: Path) -> None:
    """At registration: every function of the tasks folder fits with the project's name.

    ``shown`` is the tasks folder as the user named it; the error names its ``main.py``."""
    main_py = shown / "main.py"
    for function_name in function_names:
        check_function_name(function_name)
        problem = combination_problem(project_name, function_name)
        if problem is not None:
            raise InvalidTasksFolderError(f"{main_py}: {problem}", path=str(shown), file=str(main_py))


def check_task_queue(name: str, *, setting: str = "MULTINODE_TASK_QUEUE") -> str:
    """A task queue name Temporal accepts on every persistence (see ``MAX_TASK_QUEUE_BYTES``)."""
    if not name.strip() or name_size(name) > MAX_TASK_QUEUE_BYTES or not name.isprintable():
        raise ConfigurationError(
            f"{setting}={_shown(name)} is not a usable task queue name: use 1-{MAX_TASK_QUEUE_BYTES} printable "
            "characters (UTF-8 bytes).",
            parameter=setting,
        )
    return name
