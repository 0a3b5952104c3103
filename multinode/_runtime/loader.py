"""Importing a tasks folder the way a container does: ``.env`` loaded, folder as the import root."""

from __future__ import annotations

import importlib
import io
import sys
from pathlib import Path
from typing import Any

from dotenv import load_dotenv

from multinode._sdk import Function, declared_functions

TASKS_MODULE = "main"
"""The module of a tasks folder that declares its functions."""


def load_tasks(code_dir: Path, *, dotenv: str | None = None) -> dict[str, Function[..., Any, Any]]:
    """Import ``main.py`` of ``code_dir`` and return its declared functions by name.

    The variables of ``code_dir/.env`` are loaded first (a local version's stored folder; images built
    before ``.env`` was left out of them), then those of ``dotenv``, the text a fargate container's agent
    delivers (``dotenv.py``): both as python-dotenv reads a file, values that name variables included."""
    env_file = code_dir / ".env"
    if env_file.is_file():
        load_dotenv(env_file, override=True)
    if dotenv:
        load_dotenv(stream=io.StringIO(dotenv), override=True)
    root = str(code_dir)
    if root not in sys.path:
        sys.path.insert(0, root)
    importlib.import_module(TASKS_MODULE)
    return declared_functions()
