"""What a payload may make its reader call: nothing that can run code.

A result, a progress value or an argument is written by code the reader may not trust (a function's
code writes what the application reads). jsonpickle rebuilds objects by name, and some of its tags call
what they name with arguments from the payload (``py/reduce``, an "old-style class" in ``py/object``,
``py/function`` values), which would let a payload run ``os.system("...")`` in the reader. So a payload
may name, as something to call, only:

* a class, by ``cls.__new__`` (what pickling itself uses: ``copyreg.__newobj__``), or by its constructor
  if it is a value type of the standard library, an ``Enum``, or a class of the user's own modules
  (not of the standard library, nor of an installed distribution);
* reconstructors: the standard library's (``copyreg``, ``re._compile``, ``array``'s) and numpy's.

* a function of the user's own modules (a class's ``__reduce__`` may name one).

Other functions, as values (``py/function``) or to call, are refused.
"""

from __future__ import annotations

import enum
import functools
import importlib.metadata
import sys
from typing import Any

SAFE_FUNCTIONS = frozenset(
    {
        "copyreg.__newobj__",
        "copyreg.__newobj_ex__",
        "copyreg._reconstructor",
        "re._compile",
        "array._array_reconstructor",
        "logging.getLogger",
        "numpy._core.multiarray._reconstruct",
        "numpy.core.multiarray._reconstruct",
        "numpy._core.multiarray.scalar",
        "numpy.core.multiarray.scalar",
        "numpy._core.numeric._frombuffer",
        "numpy.core.numeric._frombuffer",
    }
)
"""Functions a payload may name: reconstructors (the standard library's, numpy's) and ``logging.getLogger``,
which build a value from data and call no code the payload chooses."""
VALUE_MODULES = frozenset(
    {
        "builtins",
        "decimal",
        "fractions",
        "pathlib",
        "collections",
        "datetime",
        "uuid",
        "ipaddress",
        "zoneinfo",
        "numpy",
        "pandas",
    }
)
"""Modules whose classes' constructors only build values."""


def function_allowed(name: str) -> bool:
    """Whether a payload may call the function ``name`` (dotted): a reconstructor, or a function of the
    user's own modules (a class's ``__reduce__`` may name one)."""
    return name in SAFE_FUNCTIONS or _own_module(name.rsplit(".", 1)[0])


def constructor_allowed(cls: Any) -> bool:
    """Whether a payload may call ``cls(*args)``."""
    if not isinstance(cls, type):
        return False
    if issubclass(cls, enum.Enum):
        return True
    module = str(getattr(cls, "__module__", ""))
    return module.split(".")[0] in VALUE_MODULES or _own_module(module)


def _own_module(module: str) -> bool:
    """A module of the user's own code: neither the standard library's nor an installed distribution's."""
    top = module.split(".")[0]
    return top in ("main", "__main__") or (top not in sys.stdlib_module_names and top not in _distributed())


@functools.cache
def _distributed() -> frozenset[str]:
    """Top-level modules that installed distributions provide."""
    return frozenset(importlib.metadata.packages_distributions())
