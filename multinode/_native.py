"""Keeping Temporal's native client safe from interpreter shutdown.

temporalio's client runs its RPCs on native (Rust) threads. When one completes, such a thread takes
the GIL to hand the result to the awaiting event loop and to free its references to that loop. If the
interpreter is finalizing at that moment, the process aborts (``Fatal Python error: PyGILState_Release``)
or segfaults, after the program's own work is done (temporalio/sdk-python#300). So the SDK never frees
a client, and at exit waits (briefly) until no native thread still holds an event loop it used.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import sys
import threading
import time
import weakref
from typing import Any

EXIT_WAIT_SECONDS = 2.0
"""Longest the interpreter's exit waits for native threads to let go of the SDK's event loops (an
RPC abandoned by a timeout may hold one until the server answers)."""

_loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_lock = threading.Lock()


def keep_forever(obj: Any) -> None:
    """Never free ``obj``, not even while the interpreter finalizes (freeing a client would hand its
    connection to native threads that then take the GIL)."""
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))


def track_running_loop() -> None:
    """Remember the running loop: the exit waits until native threads no longer hold it."""
    loop = asyncio.get_running_loop()
    if loop not in _loops:
        with _lock:
            _loops.add(loop)


def wait_for_native_threads(timeout: float = EXIT_WAIT_SECONDS) -> None:
    """Return once no stopped loop the SDK used is referenced from native code, or after ``timeout``."""
    deadline = time.monotonic() + timeout
    pause = 0.002
    while _any_loop_held_natively() and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(pause * 2, 0.1)


def _any_loop_held_natively() -> bool:
    """Whether a stopped loop has references that no Python object accounts for (native ones).

    A fresh closed loop, held the same way (only by the list), calibrates what this count includes.
    """
    gc.collect()
    with _lock:
        loops = [asyncio.new_event_loop(), *(loop for loop in _loops if not loop.is_running())]
    loops[0].close()
    counts = [sys.getrefcount(loops[i]) - _python_references(loops[i]) for i in range(len(loops))]
    return any(count > counts[0] for count in counts[1:])


def _python_references(obj: object) -> int:
    """How many references Python objects hold to ``obj`` (an object may hold it more than once)."""
    return sum(sum(1 for held in gc.get_referents(referrer) if held is obj) for referrer in gc.get_referrers(obj))
