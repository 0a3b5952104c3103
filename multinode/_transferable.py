"""Refusing, at ``.start``, arguments that would not arrive in the container as they were sent.

jsonpickle pickles a lock as a new lock (which may arrive locked), drains a generator into a list
iterator, spins for ever on ``itertools.count()``, and rebuilds a thread or a process as an object that
runs nothing. None of these is an error to jsonpickle, so the arguments are walked before they are
pickled — containers, and the state of objects as pickling sees it (``__getstate__``, ``__reduce__``,
else ``__dict__`` and ``__slots__``), to a bounded depth — and the first such value raises
``PayloadError`` naming the argument, where in it the value sits, its type and what to pass instead.
"""

from __future__ import annotations

import collections
import collections.abc
import io
import sys
import threading
import types
from collections.abc import Iterable, Iterator
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any

from jsonpickle import handlers

from multinode import _serialization_ext
from multinode.errors import PayloadError

MAX_DEPTH = 32
"""How deep the walk goes into nested containers and objects; deeper values are left to jsonpickle."""
MAX_VALUES = 200_000
"""How many values the walk looks at, at most, in one argument (the size limit bounds the rest)."""

_ATOMIC: tuple[type, ...] = (str, bytes, bytearray, int, float, complex, bool, type(None), Decimal, Fraction)
_ATOMIC += (range, slice, date, datetime, time, timedelta, timezone, type(Ellipsis))
"""Values with no parts to walk (``datetime`` is a ``date``)."""
_REFERENCES = (
    type,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
)
"""Values jsonpickle sends by name, not by state (a function, a class): nothing to walk."""
_CONTAINERS = (list, tuple, set, frozenset, collections.deque)

_LOCK_ADVICE = (
    "a lock, semaphore, event, condition or queue works only inside one process: jsonpickle would send a "
    "new, unshared one (a lock may even arrive locked). Create it inside the function instead"
)
_ITERATOR_ADVICE = (
    "an iterator or generator is used up by pickling and arrives as a different kind of iterator (an "
    "infinite one never finishes pickling). Pass a list instead, e.g. list(values)"
)
_IO_ADVICE = (
    "an open file or stream belongs to this process. Pass its contents (bytes or str), or a path or URL the "
    "function can open itself"
)
_SOCKET_ADVICE = "a network connection belongs to this process. Pass the address and connect inside the function"
_THREAD_ADVICE = (
    "a thread or process belongs to this program and would arrive as one that runs nothing. Pass the data it "
    "works on instead"
)
_MODULE_ADVICE = "a module cannot be pickled. Import it inside the function instead"
_AWAITABLE_ADVICE = "a coroutine, task or future is unfinished work of this program. Await it and pass its result"


def check_transferable(value: Any, *, what: str) -> None:
    """``PayloadError`` if ``value`` is or holds a value that cannot travel to a container as it is.

    ``what`` names the value in the error ("Argument 2 (`job`)")."""
    _serialization_ext.activate()  # numpy and pandas values have handlers: their own forms, not walked
    _Walk(what).visit(value, "", 0)


class _Walk:
    def __init__(self, what: str) -> None:
        self.what = what
        self.seen: set[int] = set()
        self.budget = MAX_VALUES

    def visit(self, value: Any, path: str, depth: int) -> None:
        self.budget -= 1
        if self.budget < 0 or isinstance(value, (_ATOMIC, _REFERENCES)):
            return
        refusal = _refusal(value)
        if refusal is not None:
            name, advice = refusal
            where = f"{self.what} is {name}" if not path else f"{self.what} holds {name} at `{path}`"
            raise PayloadError(f"{where}: {advice}.")
        if id(value) in self.seen or depth >= MAX_DEPTH or handlers.get(type(value)) is not None:
            return
        self.seen.add(id(value))
        for step, item in _parts(value):
            self.visit(item, path + step, depth + 1)
            if self.budget < 0:
                return


def _parts(value: Any) -> Iterator[tuple[str, Any]]:
    """What pickling ``value`` pickles, each with the step that leads to it (``[2]``, ``.lock``)."""
    if isinstance(value, dict):
        for key, item in list(value.items()):
            yield " (a key)", key
            yield f"[{key!r}]", item
    elif isinstance(value, (list, tuple, collections.deque)):
        for index, item in enumerate(list(value)):
            yield f"[{index}]", item
    elif isinstance(value, (set, frozenset)):
        for item in list(value):
            yield " (an element)", item
    yield from _object_state(value)


def _object_state(value: Any) -> Iterable[tuple[str, Any]]:
    """An object's state as pickling sees it: ``__getstate__()`` if the class defines one, the arguments
    and state of ``__reduce_ex__`` if it defines that, else its ``__dict__`` and ``__slots__``."""
    cls = type(value)
    if getattr(cls, "__getstate__", None) not in (None, getattr(object, "__getstate__", None)):
        try:
            state = value.__getstate__()
        except Exception:
            return []  # jsonpickle reports it
        return _state_parts(state)
    # Compared as objects: whether the class overrides object's own (mypy sees unrelated signatures).
    overrides: tuple[object, object] = (cls.__reduce_ex__, cls.__reduce__)
    if overrides[0] is not object.__reduce_ex__ or overrides[1] is not object.__reduce__:
        if isinstance(value, (dict, *_CONTAINERS)) and cls in (dict, *_CONTAINERS):
            return []  # the items are walked already
        try:
            reduced = value.__reduce_ex__(2)
        except Exception:
            return []
        if not isinstance(reduced, tuple):
            return []  # a global's name
        # (callable, args, state, listitems, dictitems): the items of a list or dict subclass are walked
        # as those of a container; the callable is sent by name.
        arguments = [(" (pickled through __reduce__)", arg) for arg in (reduced[1] if len(reduced) > 1 else ())]
        return arguments + list(_state_parts(reduced[2] if len(reduced) > 2 else None))
    parts: list[tuple[str, Any]] = []
    try:
        parts += [(f".{name}", item) for name, item in vars(value).items()]
    except TypeError:
        pass  # no __dict__
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in [slots] if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            try:
                parts.append((f".{slot}", getattr(value, slot)))
            except AttributeError:
                continue
    return parts


def _state_parts(state: Any) -> Iterable[tuple[str, Any]]:
    if state is None:
        return []
    if isinstance(state, dict):
        return [(f".{key}" if isinstance(key, str) else f"[{key!r}]", item) for key, item in state.items()]
    if isinstance(state, tuple) and len(state) == 2 and all(isinstance(s, (dict, type(None))) for s in state):
        return [part for half in state for part in _state_parts(half)]  # (__dict__, slots)
    return [(" (its pickled state)", state)]


def _refusal(value: Any) -> tuple[str, str] | None:
    """``(what it is, why and what to pass instead)`` for a value that cannot travel, else None."""
    if isinstance(value, types.ModuleType):
        return f"the module {value.__name__}", _MODULE_ADVICE
    lock = _lock_name(value)
    if lock is not None:
        return lock, _LOCK_ADVICE
    if isinstance(value, io.IOBase) or _is(value, "tempfile", "SpooledTemporaryFile"):
        return _an(_type_name(value), "an open file or stream"), _IO_ADVICE
    if _is(value, "socket", "socket"):
        return _an(_type_name(value)), _SOCKET_ADVICE
    if isinstance(value, threading.Thread) or _is(value, "multiprocessing.process", "BaseProcess"):
        return _an(_type_name(value)), _THREAD_ADVICE
    if _is(value, "subprocess", "Popen") or _is(value, "multiprocessing.pool", "Pool"):
        return _an(_type_name(value)), _THREAD_ADVICE
    if isinstance(value, (types.CoroutineType, collections.abc.AsyncIterator)) or _is(value, "asyncio", "Future"):
        return _an(_type_name(value)), _AWAITABLE_ADVICE
    if _is(value, "concurrent.futures", "Future"):
        return _an(_type_name(value)), _AWAITABLE_ADVICE
    if isinstance(value, collections.abc.Iterator):
        kind = "a generator" if isinstance(value, types.GeneratorType) else _an(_type_name(value))
        return kind, _ITERATOR_ADVICE
    return None


_THREADING_LOCKS: dict[type, str] = {
    type(threading.Lock()): "threading.Lock",
    type(threading.RLock()): "threading.RLock",
    threading.Condition: "threading.Condition",
    threading.Semaphore: "threading.Semaphore",
    threading.BoundedSemaphore: "threading.BoundedSemaphore",
    threading.Event: "threading.Event",
    threading.Barrier: "threading.Barrier",
}
_SYNC_MODULES = ("multiprocessing.synchronize", "asyncio.locks", "asyncio.queues", "queue")


def _lock_name(value: Any) -> str | None:
    for cls in type(value).__mro__:
        if cls in _THREADING_LOCKS:
            return _an(_THREADING_LOCKS[cls])
        if cls.__module__ in _SYNC_MODULES and cls.__module__ in sys.modules:
            return _an(_type_name(value))
        if cls.__module__ == "threading" and cls.__name__ in ("_RLock", "_PyRLock"):
            return "a threading.RLock"
        if cls.__module__ == "_queue" and cls.__name__ == "SimpleQueue":
            return "a queue.SimpleQueue"
    return None


def _is(value: Any, module: str, name: str) -> bool:
    """``isinstance(value, module.name)`` without importing the module (a value of it has loaded it)."""
    loaded = sys.modules.get(module)
    cls = getattr(loaded, name, None) if loaded is not None else None
    return isinstance(cls, type) and isinstance(value, cls)


_PUBLIC_MODULES = {
    "_io": "io",
    "_thread": "threading",
    "_socket": "socket",
    "_asyncio": "asyncio",
    "asyncio.locks": "asyncio",
    "asyncio.queues": "asyncio",
    "_queue": "queue",
    "multiprocessing.synchronize": "multiprocessing",
}


def _type_name(value: Any) -> str:
    cls = type(value)
    module = _PUBLIC_MODULES.get(cls.__module__, cls.__module__)
    return cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}"


def _an(name: str, kind: str | None = None) -> str:
    article = "an" if name[:1].lower() in "aeiou" else "a"
    return f"{article} {name}" + (f" ({kind})" if kind else "")
