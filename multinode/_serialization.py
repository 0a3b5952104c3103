"""jsonpickle encoding of arguments and results, with the size limits and class look-up by name.

Payloads travel through Temporal as JSON text, so the Web UI shows them readably; the control plane
never decodes them. Only the SDK and the container do, each with its own versions of the libraries
a value comes from: numpy and pandas values get version-independent forms (``_serialization_ext``),
and whatever cannot be rebuilt raises ``PayloadError`` instead of jsonpickle's silent stand-ins.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import inspect
import json
import sys
import sysconfig
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jsonpickle
from jsonpickle import handlers, tags
from jsonpickle.errors import ClassNotFoundError
from jsonpickle.unpickler import Unpickler, loadclass

from multinode import _serialization_ext
from multinode._payload_safety import constructor_allowed, function_allowed
from multinode._transferable import check_transferable
from multinode.errors import PayloadError

MAX_PAYLOAD_CHARS = 250_000
"""Largest pickled form of one argument, one result or one yielded value, in characters."""
MAX_ARGUMENTS_CHARS = 500_000
"""Largest pickled size of all of an invocation's arguments together. Temporal keeps them in the
invocation's history once per attempt (up to 51), beside up to 16 MB of progress, and a history is
capped at 50 MB; this also stays under the 512 KiB at which Temporal warns about a payload's size."""

_CLASS_TAGS = (tags.OBJECT, tags.TYPE)
_ADVICE = "Pass plain data (numbers, strings, lists, dicts) or instances of classes defined at module level."


def encode(value: Any, *, what: str) -> str:
    """Pickle one value; ``what`` names it in errors ("The result", "Argument 2 (`distances`)")."""
    _serialization_ext.activate()
    try:
        text: str = jsonpickle.encode(value, keys=True, warn=False)
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"
        raise PayloadError(f"{what} cannot be pickled with jsonpickle ({reason}). {_ADVICE}") from exc
    if len(text) > MAX_PAYLOAD_CHARS:
        raise PayloadError(
            f"{what} takes {len(text):,} characters when pickled, over the limit of {MAX_PAYLOAD_CHARS:,}. "
            "Store large data elsewhere (e.g. S3) and pass its location instead."
        )
    lost = _first_lost(value, _check_round_trip(text, what))
    if lost is not None:
        raise PayloadError(f"{what} cannot be pickled with jsonpickle: a {type(lost).__name__} becomes None. {_ADVICE}")
    return text


def decode(text: str, *, what: str = "The value") -> Any:
    """Unpickle ``text``, finding classes by name when their module path differs between codebases."""
    try:
        return _decode(text)
    except _Unrebuildable as exc:
        raise PayloadError(f"{what} cannot be rebuilt here: {exc}") from exc.__cause__


def _decode(text: str) -> Any:
    _serialization_ext.activate(text)
    unpickler = _StrictUnpickler(keys=True, on_missing="error")
    try:
        return jsonpickle.decode(text, keys=True, classes=_fallback_classes(text), context=unpickler)
    except _Unrebuildable:
        raise
    except (Exception, ClassNotFoundError) as exc:  # ClassNotFoundError is a BaseException
        raise _Unrebuildable("a value", f"which fails to rebuild: {type(exc).__name__}: {exc}") from exc


def encode_arguments(args: Sequence[Any], kwargs: Mapping[str, Any], positional: Sequence[str]) -> str:
    """The invocation's ``{"args": [...], "kwargs": {...}}``, each argument checked on its own.

    ``positional`` names the function's positional parameters, for errors. The arguments travel as one
    jsonpickle document (what containers decode), so objects shared between arguments stay shared.
    """
    labelled = [(argument_label(i, positional), v) for i, v in enumerate(args)]
    labelled += [(argument_label(k, positional), v) for k, v in kwargs.items()]
    for label, value in labelled:
        # Before jsonpickle, which would drain a generator (or spin on an endless one) and send locks.
        check_transferable(value, what=label[:1].upper() + label[1:])
    total = sum(len(encode(value, what=label[:1].upper() + label[1:])) for label, value in labelled)
    if total > MAX_ARGUMENTS_CHARS:
        raise PayloadError(
            f"The arguments take {total:,} characters together when pickled, over the limit of "
            f"{MAX_ARGUMENTS_CHARS:,} for all the arguments of one invocation (each may take up to "
            f"{MAX_PAYLOAD_CHARS:,}). Store large data elsewhere (e.g. S3) and pass its location instead."
        )
    text: str = jsonpickle.encode({"args": list(args), "kwargs": dict(kwargs)}, keys=True, warn=False)
    return text


def decode_arguments(text: str, positional: Sequence[str]) -> tuple[list[Any], dict[str, Any]]:
    """``(args, kwargs)`` from ``encode_arguments``' text; an error names the argument at fault."""
    try:
        payload = decode(text, what="The arguments")
    except PayloadError as exc:
        # Decode each argument alone only to name the culprit: references between arguments may keep
        # one from decoding alone, so the whole document stays the one that is used.
        tree = json.loads(text)
        parts = [(i, node) for i, node in enumerate(tree["args"])] + list(tree["kwargs"].items())
        for key, node in parts:
            label = argument_label(key, positional)
            decode(json.dumps(node), what=label[:1].upper() + label[1:])
        raise exc
    return list(payload["args"]), dict(payload["kwargs"])


def positional_names(fn: Callable[..., Any]) -> list[str]:
    """The names of ``fn``'s positional parameters, in order, for ``argument_label``."""
    kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return [p.name for p in inspect.signature(fn).parameters.values() if p.kind in kinds]


def argument_label(key: int | str, positional: Sequence[str]) -> str:
    """How errors name an argument: a 0-based position or a keyword (argument 2 (`distances`))."""
    if isinstance(key, str):
        return f"keyword argument `{key}`"
    return f"argument {key + 1}" + (f" (`{positional[key]}`)" if key < len(positional) else "")


class _Unrebuildable(Exception):
    """A value jsonpickle would otherwise replace silently ([] for a failed ``py/reduce``, None for a
    function it cannot import, the raw JSON for a missing type). Not a TypeError: jsonpickle catches
    those around nested values and substitutes."""

    def __init__(self, type_name: str, reason: str, advice: str = _ADVICE) -> None:
        super().__init__(f"it holds {type_name}, {reason}{_installed(type_name)}. {advice}")


_CALL_REFUSED = "which a payload may not make its reader call (it could run any code there)"
_CALL_ADVICE = "Pass data (or a function's name as a string), not functions or objects that rebuild by calling them."


class _StrictUnpickler(Unpickler):  # type: ignore[misc]
    def _restore(self, obj: Any, *rest: Any) -> Any:
        try:
            return super()._restore(obj, *rest)
        except TypeError as exc:
            raise _Unrebuildable(_describe(obj), f"which fails to rebuild: {type(exc).__name__}: {exc}") from exc

    def _restore_object(self, obj: dict[str, Any]) -> Any:
        path = obj[tags.OBJECT]
        found = loadclass(path, classes=self._classes) if isinstance(path, str) else None
        if found is not None and not isinstance(found, type):  # jsonpickle would call it ("old-style class")
            raise _Unrebuildable(f"a call of {path}", _CALL_REFUSED, _CALL_ADVICE)
        try:
            return super()._restore_object(obj)
        except _Unrebuildable:
            raise
        except ClassNotFoundError as exc:
            top = path.split(".")[0]
            install = ""
            if top not in ("main", "__main__") and not _importable(top):
                install = f"Install {top} here (for a tasks folder, in requirements.txt), or define"
            advice = (
                f"{install or 'Define'} a class of that name (Multinode finds it by name in __main__, main or "
                "your own modules), or pass plain data."
            )
            raise _Unrebuildable(f"an instance of {path}", "which this program does not define", advice) from exc
        except Exception as exc:
            raise _Unrebuildable(f"a {path}", f"which fails to rebuild: {type(exc).__name__}: {exc}") from exc

    def _restore_reduce(self, obj: dict[str, Any]) -> Any:
        maker = obj[tags.REDUCE][0] if isinstance(obj[tags.REDUCE], list) and obj[tags.REDUCE] else None
        function = maker.get(tags.FUNCTION) if isinstance(maker, dict) else None
        # Checked first so that the error names what the function builds (py/reduce's arguments).
        if isinstance(function, str) and loadclass(function, classes=self._classes) is None:
            raise _Unrebuildable(_describe(obj), "which this program does not define")
        kind = maker.get(tags.TYPE) if isinstance(maker, dict) else None
        if isinstance(function, str):
            allowed = function_allowed(function)
        elif isinstance(kind, str):
            allowed = constructor_allowed(loadclass(kind, classes=self._classes))
        else:
            allowed = False
        if not allowed:
            raise _Unrebuildable(f"a call of {function or kind or 'a value'}", _CALL_REFUSED, _CALL_ADVICE)
        try:
            return super()._restore_reduce(obj)
        except _Unrebuildable:
            raise
        except Exception as exc:
            raise _Unrebuildable(_describe(obj), f"which fails to rebuild: {type(exc).__name__}: {exc}") from exc

    def _restore_function(self, obj: dict[str, Any]) -> Any:
        found = super()._restore_function(obj)
        if found is None:
            raise _Unrebuildable(f"a reference to {obj[tags.FUNCTION]}", "which this program does not define")
        if not function_allowed(str(obj[tags.FUNCTION])):
            raise _Unrebuildable(f"the function {obj[tags.FUNCTION]}", _CALL_REFUSED, _CALL_ADVICE)
        return found

    def _restore_type(self, obj: dict[str, Any]) -> Any:
        found = super()._restore_type(obj)
        if found is obj:
            raise _Unrebuildable(f"the class {obj[tags.TYPE]}", "which this program does not define")
        return found

    def _restore_module(self, obj: dict[str, Any]) -> Any:
        found = super()._restore_module(obj)
        if found is None:
            raise _Unrebuildable(f"the module {obj[tags.MODULE]}", "which this program cannot import")
        return found


def _describe(node: Any) -> str:
    """What a JSON node pickles, for errors; a ``py/reduce`` names the class it builds if it says."""
    if not isinstance(node, dict):
        return f"a {type(node).__name__}"
    if tags.OBJECT in node:
        return f"a {node[tags.OBJECT]}"
    if tags.REDUCE in node and isinstance(node[tags.REDUCE], list) and node[tags.REDUCE]:
        func, args = (node[tags.REDUCE] + [None])[:2]
        maker = func.get(tags.FUNCTION) or func.get(tags.TYPE) if isinstance(func, dict) else None
        first = args.get(tags.TUPLE, [None])[:1] if isinstance(args, dict) else [None]
        built = first[0].get(tags.TYPE) if first and isinstance(first[0], dict) else None
        if built and maker:
            return f"a {built} rebuilt by calling {maker}"
        return f"a value rebuilt by calling {maker or 'a function'}"
    for tag in (tags.TYPE, tags.FUNCTION):
        if tag in node:
            return f"a reference to {node[tag]}"
    return "a value"


def _installed(described: str) -> str:
    """What is installed here of the libraries the dotted names in ``described`` belong to."""
    notes: list[str] = []
    for word in described.split():
        top = word.split(".")[0]
        if "." not in word or top in ("", "main", "__main__") or top in sys.stdlib_module_names:
            continue
        try:
            note = f"{top} {importlib.metadata.version(top)} is installed here"
        except importlib.metadata.PackageNotFoundError:
            note = "" if _importable(top) else f"there is no module {top} here"
        if note and note not in notes:
            notes.append(note)
    return f" ({'; '.join(notes)})" if notes else ""


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return True  # a module that exists but fails to import, or an odd name: not "missing"


def _first_lost(original: Any, decoded: Any, depth: int = 0, seen: set[int] | None = None) -> Any:
    """A value that jsonpickle silently turned into None (it does so for lambdas, open files...)."""
    if depth > 20:
        return None
    if decoded is None:
        return original
    # Rebuilt as the very same object (a logger by name), or compared already: an object graph with
    # cycles and many branches (a logger's manager) would otherwise take exponential time.
    seen = set() if seen is None else seen
    if decoded is original or id(original) in seen:
        return None
    seen.add(id(original))
    if isinstance(original, (list, tuple)) and isinstance(decoded, (list, tuple)):
        pairs = list(zip(original, decoded, strict=False))
    elif isinstance(original, dict) and isinstance(decoded, dict):
        pairs = [(v, decoded.get(k)) for k, v in original.items()]
    elif (
        hasattr(original, "__dict__")
        and hasattr(decoded, "__dict__")
        and not isinstance(original, type)
        and handlers.get(type(original)) is None  # a handler's form is not the object's __dict__
    ):
        pairs = [(v, vars(decoded).get(k)) for k, v in vars(original).items()]
    else:
        return None
    for left, right in pairs:
        if left is not None and (lost := _first_lost(left, right, depth + 1, seen)) is not None:
            return lost
    return None


def _check_round_trip(text: str, what: str) -> Any:
    # jsonpickle turns what it cannot pickle into nulls or bare references without raising; decoding
    # here catches that at `.start` instead of in the container.
    try:
        return _decode(text)
    except _Unrebuildable as exc:
        raise PayloadError(f"{what} cannot be pickled faithfully with jsonpickle: {exc}") from exc.__cause__


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
        cls = _serialization_ext.stand_in(path)
        if cls is None and _import_path(path) is None:
            cls = _find_by_name(path)
        if cls is not None:
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
