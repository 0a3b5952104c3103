"""jsonpickle encoding of arguments and results, with the size limit and class look-up by name.

Payloads travel through Temporal as JSON text, so the Web UI shows them readably; the control plane
never decodes them. Only the SDK and the container do.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
import sysconfig
from typing import Any

import jsonpickle
from jsonpickle.errors import ClassNotFoundError

from multinode.errors import PayloadError

MAX_PAYLOAD_CHARS = 250_000
"""Largest pickled form of an argument list or a result, in characters."""

_CLASS_TAGS = ("py/object", "py/type")


def encode(value: Any, *, what: str) -> str:
    """Pickle ``value``; ``what`` names it in errors ("the arguments", "the result")."""
    try:
        text: str = jsonpickle.encode(value, keys=True, warn=False)
    except Exception as exc:
        raise PayloadError(
            f"{what} cannot be pickled with jsonpickle ({type(exc).__name__}: {exc}). Pass plain data "
            "(numbers, strings, lists, dicts) or instances of classes defined at module level."
        ) from exc
    if len(text) > MAX_PAYLOAD_CHARS:
        raise PayloadError(
            f"{what} take {len(text):,} characters when pickled, over the limit of {MAX_PAYLOAD_CHARS:,}. "
            "Store large data elsewhere (e.g. S3) and pass its location instead."
        )
    lost = _first_lost(value, _check_round_trip(text, what))
    if lost is not None:
        raise PayloadError(
            f"{what} cannot be pickled with jsonpickle: a {type(lost).__name__} becomes None. Pass plain "
            "data (numbers, strings, lists, dicts) or instances of classes defined at module level."
        )
    return text


def decode(text: str) -> Any:
    """Unpickle ``text``, finding classes by name when their module path differs between codebases."""
    try:
        return jsonpickle.decode(text, keys=True, classes=_fallback_classes(text), on_missing="error")
    except (Exception, ClassNotFoundError) as exc:  # ClassNotFoundError is a BaseException
        found = re.search(r"could not find ([\w.]+)", str(exc))
        missing = found.group(1) if found else str(exc)
        raise PayloadError(
            f"The value holds an instance of {missing}, which this program does not define. Define a class "
            f"of that name (Multinode finds it by name in __main__, main or your own modules), or pass plain data."
        ) from exc


def _first_lost(original: Any, decoded: Any, depth: int = 0) -> Any:
    """A value that jsonpickle silently turned into None (it does so for lambdas, open files...)."""
    if depth > 20:
        return None
    if decoded is None:
        return original
    if isinstance(original, (list, tuple)) and isinstance(decoded, (list, tuple)):
        pairs = list(zip(original, decoded, strict=False))
    elif isinstance(original, dict) and isinstance(decoded, dict):
        pairs = [(v, decoded.get(k)) for k, v in original.items()]
    elif hasattr(original, "__dict__") and hasattr(decoded, "__dict__") and not isinstance(original, type):
        pairs = [(v, vars(decoded).get(k)) for k, v in vars(original).items()]
    else:
        return None
    for left, right in pairs:
        if left is not None and (lost := _first_lost(left, right, depth + 1)) is not None:
            return lost
    return None


def _check_round_trip(text: str, what: str) -> Any:
    # jsonpickle turns what it cannot pickle into nulls or bare references without raising; decoding
    # here catches that at `.start` instead of in the container.
    try:
        return decode(text)
    except Exception as exc:
        raise PayloadError(
            f"{what} cannot be pickled faithfully with jsonpickle ({type(exc).__name__}: {exc}). Pass plain "
            "data or instances of classes defined at module level."
        ) from exc


def _fallback_classes(text: str) -> dict[str, type] | None:
    """Map each class path in ``text`` that does not import to a loaded class of the same name.

    An application usually defines a shared class in ``__main__`` or its own package while the tasks
    folder defines it in ``main``; the guide promises that a class defined in both round-trips.
    """
    if "py/object" not in text and "py/type" not in text:
        return None
    paths: set[str] = set()
    _collect_class_paths(json.loads(text), paths)
    found: dict[str, type] = {}
    for path in paths:
        if _import_path(path) is None and (cls := _find_by_name(path)) is not None:
            found[path] = cls
    return found or None


def _collect_class_paths(node: Any, into: set[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _CLASS_TAGS and isinstance(value, str):
                into.add(value)
            else:
                _collect_class_paths(value, into)
    elif isinstance(node, list):
        for item in node:
            _collect_class_paths(item, into)


def _import_path(path: str) -> Any:
    module_name, _, qualname = path.rpartition(".")
    while module_name:
        try:
            obj: Any = importlib.import_module(module_name)
        except Exception:
            module_name, _, head = module_name.rpartition(".")
            qualname = f"{head}.{qualname}"
            continue
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
            if obj is None:
                return None
        return obj
    return None


def _find_by_name(path: str) -> type | None:
    """A class of that name in ``__main__``, ``main`` or another module of the program's own code
    (never the standard library or an installed package, where a same-named class is unrelated)."""
    name = path.rpartition(".")[2]
    preferred = [sys.modules.get("__main__"), sys.modules.get("main")]
    for module in [*preferred, *[m for m in list(sys.modules.values()) if _is_own_code(m)]]:
        candidate = getattr(module, name, None) if module is not None else None
        if isinstance(candidate, type) and candidate.__module__ == getattr(module, "__name__", None):
            return candidate
    return None


def _is_own_code(module: Any) -> bool:
    path = getattr(module, "__file__", None)
    if not path or getattr(module, "__name__", "").startswith(("multinode", "temporalio")):
        return False
    return not any(path.startswith(root) for root in _library_roots())


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    return tuple({paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths})
