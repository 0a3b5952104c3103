"""Importing a tasks folder the way a container does: ``.env`` loaded, folder as the import root."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

from dotenv import load_dotenv

from multinode._sdk import Function, declared_functions

TASKS_MODULE = "main"
"""The module of a tasks folder that declares its functions."""


def load_tasks(code_dir: Path) -> dict[str, Function[..., Any, Any]]:
    """Import ``main.py`` of ``code_dir`` and return its declared functions by name."""
    env_file = code_dir / ".env"
    if env_file.is_file():
        load_dotenv(env_file, override=True)
    root = str(code_dir)
    if root not in sys.path:
        sys.path.insert(0, root)
    importlib.import_module(TASKS_MODULE)
    return declared_functions()
