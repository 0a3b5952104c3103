"""Version-independent jsonpickle forms of numpy and pandas values.

jsonpickle's default for these types is ``__reduce__``, which names private functions of the
installed version (``numpy._core.multiarray._reconstruct``, which numpy < 1.26 lacks): an array pickled
by an application on numpy 2 cannot be rebuilt by a tasks folder pinned to numpy 1.24. The forms here
name only public types, dtype strings (``"<f8"``, stable since numpy 1.0) and raw bytes.

jsonpickle.ext's own handlers are not used: its pandas DataFrame form codes column dtypes with
abbreviations computed from the installed numpy and pandas (``"pd/f"`` is float64 under numpy 2 but
float32 under numpy 1), its ndarray form sends the whole base array of a view, and both would tie
the wire format to the jsonpickle version of each side.

The handlers are registered only once the program has imported numpy or pandas, or decodes a payload
that names them, so that ``import multinode`` never imports either. Registration is process-wide
(jsonpickle's handler registry is global): the program's own jsonpickle calls use these forms too.
"""

from __future__ import annotations

import ast
import base64
import re
import sys
import threading
import zlib
from typing import Any

from jsonpickle.handlers import BaseHandler, register

LIBRARIES = ("numpy", "pandas")
_MENTION = re.compile(r'"py/(?:object|type|function|mod)": "(numpy|pandas)[./]')
_active: set[str] = set()
_lock = threading.Lock()

READABLE_SIZE = 16
"""Arrays of at most this many numbers are sent as readable lists; larger ones as compressed bytes."""


class BytearrayHandler(BaseHandler):
    """jsonpickle has none: without it a ``bytearray`` arrives empty."""

    def flatten(self, obj: Any, data: dict[str, Any]) -> dict[str, Any]:
        data["b64"] = _b64(bytes(obj))
        return data

    def restore(self, data: dict[str, Any]) -> Any:
        return bytearray(_unb64(data["b64"]))


register(bytearray, BytearrayHandler)


def activate(text: str | None = None) -> None:
    """Register the handlers of each library that is imported, or that ``text`` (a payload) names."""
    wanted = {name for name in LIBRARIES if name in sys.modules}
    if text is not None and ("numpy" in text or "pandas" in text):
        wanted.update(_MENTION.findall(text))
    if "pandas" in wanted:
        wanted.add("numpy")  # pandas values hold numpy arrays
    with _lock:
        for name in [n for n in LIBRARIES if n in wanted and n not in _active]:
            try:
                _register_numpy() if name == "numpy" else _register_pandas()
            except ImportError:
                continue  # not installed: decoding then reports the missing class by name
            _active.add(name)


def stand_in(path: str) -> type | None:
    """A class to decode ``path`` with when this version of numpy or pandas may have no class of that
    name; the handlers rebuild values from their dtype and data, not from the class.

    numpy 2 names the boolean scalar ``numpy.bool``, which numpy 1 lacks (and warns about when it is
    looked up); the class of a dtype is ``numpy.dtypes.Float64DType`` in numpy >= 1.25 and an
    unimportable ``numpy.dtype[float64]`` before; pandas moves its index classes between modules.
    """
    top, _, name = path.partition(".")
    if top not in _active or top not in sys.modules:
        return None
    if top == "numpy":
        import numpy as np

        if name.endswith("DType") or name.startswith("dtype["):  # numpy < 1.25: "numpy.dtype[float64]"
            return np.dtype
        return np.bool_ if name == "bool" else None
    import pandas as pd

    if name.endswith("Index") and _missing(pd, name):
        index: type = pd.Index
        return index
    return None


def _missing(package: Any, dotted: str) -> bool:
    import importlib

    module_name, _, attr = f"{package.__name__}.{dotted}".rpartition(".")
    try:
        return not hasattr(importlib.import_module(module_name), attr)
    except ImportError:
        return True


# --- numpy ------------------------------------------------------------------------------------


def _dtype_spec(dtype: Any) -> str:
    if dtype.kind == "T":  # numpy 2's variable-width StringDType; .str would describe pointers
        if hasattr(dtype, "na_object"):
            raise TypeError("a StringDType with an na_object cannot be pickled portably")
        return "StringDType"
    if dtype.fields is None and dtype.subdtype is None:
        return str(dtype.str)
    text = str(dtype)  # structured: "[('a', '<i4'), ('b', '<f8')]", the same in numpy 1 and 2
    prefix = "(numpy.record, "
    return text[len(prefix) : -1] if text.startswith(prefix) else text


def _dtype_from_spec(spec: str) -> Any:
    import numpy as np

    if spec == "StringDType":
        string_dtype = getattr(getattr(np, "dtypes", None), "StringDType", None)
        if string_dtype is None:
            raise TypeError(f"numpy {np.__version__} has no StringDType (numpy 2 added it)")
        return string_dtype()
    return np.dtype(ast.literal_eval(spec) if spec[:1] in "[{(" else spec)


def _b64(data: bytes) -> str:
    return base64.b64encode(zlib.compress(data)).decode("ascii")


def _unb64(text: str) -> bytes:
    return zlib.decompress(base64.b64decode(text))


class NDArrayHandler(BaseHandler):
    """``{"dtype": "<f8", "shape": [30, 30], "bytes": ...}``; object and StringDType arrays go item by
    item (their bytes are pointers)."""

    def flatten(self, obj: Any, data: dict[str, Any]) -> dict[str, Any]:
        data["dtype"] = _dtype_spec(obj.dtype)
        data["shape"] = list(obj.shape)
        if obj.dtype.hasobject or obj.dtype.kind == "T":
            data["items"] = self.context.flatten(list(obj.ravel(order="C").tolist()), reset=False)
        elif obj.size <= READABLE_SIZE and obj.dtype.kind in "biuf" and obj.dtype.itemsize <= 8:
            data["values"] = obj.ravel(order="C").tolist()
        else:
            data["bytes"] = _b64(obj.tobytes(order="C"))
        return data

    def restore(self, data: dict[str, Any]) -> Any:
        import numpy as np

        dtype = _dtype_from_spec(data["dtype"])
        shape = tuple(data["shape"])
        if "items" in data:
            items = self.context.restore(data["items"], reset=False)
            arr = np.empty(len(items), dtype=dtype)
            for i, item in enumerate(items):
                arr[i] = item
        elif "values" in data:
            arr = np.array(data["values"], dtype=dtype)
        else:
            arr = np.frombuffer(_unb64(data["bytes"]), dtype=dtype).copy()
        return arr.reshape(shape)


class ScalarHandler(BaseHandler):
    """``{"dtype": "<f8", "value": 1.5}``; bytes for values a Python number would round."""

    def flatten(self, obj: Any, data: dict[str, Any]) -> dict[str, Any]:
        dtype = obj.dtype
        if dtype.hasobject:
            raise TypeError(f"a numpy {dtype} scalar with object fields cannot be pickled portably")
        data["dtype"] = _dtype_spec(dtype)
        if dtype.kind == "V" or (dtype.kind in "fc" and dtype.itemsize > (8 if dtype.kind == "f" else 16)):
            data["bytes"] = _b64(obj.tobytes())
        else:
            data["value"] = self.context.flatten(obj.item(), reset=False)
        return data

    def restore(self, data: dict[str, Any]) -> Any:
        import numpy as np

        dtype = _dtype_from_spec(data["dtype"])
        if "bytes" in data:
            return np.frombuffer(_unb64(data["bytes"]), dtype=dtype).copy()[0]
        return np.array(self.context.restore(data["value"], reset=False), dtype=dtype)[()]


class DTypeHandler(BaseHandler):
    def flatten(self, obj: Any, data: dict[str, Any]) -> dict[str, Any]:
        data["dtype"] = _dtype_spec(obj)
        return data

    def restore(self, data: dict[str, Any]) -> Any:
        return _dtype_from_spec(data["dtype"])


def _register_numpy() -> None:
    import numpy as np

    # Only plain ndarrays: a subclass (a masked array, a user's own) would come back as a plain array.
    register(np.ndarray, NDArrayHandler)
    register(np.generic, ScalarHandler, base=True)
    register(np.dtype, DTypeHandler, base=True)


# --- pandas -----------------------------------------------------------------------------------


class IndexHandler(BaseHandler):
    def flatten(self, obj: Any, data: dict[str, Any]) -> dict[str, Any]:
        import pandas as pd

        if not type(obj).__module__.startswith("pandas"):
            raise TypeError(f"{type(obj).__qualname__} is a subclass of a pandas index; pass a pandas index")
        if isinstance(obj, pd.RangeIndex):
            data["range"] = [obj.start, obj.stop, obj.step]
        elif isinstance(obj, pd.MultiIndex):
            levels = [obj.get_level_values(i) for i in range(obj.nlevels)]
            data["levels"] = self.context.flatten(levels, reset=False)
        else:
            data["dtype"] = _dtype_text(obj.dtype)
            data["values"] = self.context.flatten(obj.to_numpy(), reset=False)
            if getattr(obj, "freqstr", None):
                data["freq"] = obj.freqstr
        data["names"] = self.context.flatten(list(obj.names), reset=False)
        return data

    def restore(self, data: dict[str, Any]) -> Any:
        import pandas as pd

        names = self.context.restore(data["names"], reset=False)
        if "range" in data:
            return pd.RangeIndex(*data["range"], name=names[0])
        if "levels" in data:
            return pd.MultiIndex.from_arrays(self.context.restore(data["levels"], reset=False), names=names)
        values = self.context.restore(data["values"], reset=False)
        index = pd.Index(values, dtype=data["dtype"], name=names[0])
        if data.get("freq"):
            try:
                index = type(index)(index, freq=data["freq"])
            except (TypeError, ValueError):
                pass  # an alias this pandas does not know: the values are intact, only the label is lost
        return index


def _dtype_text(dtype: Any) -> str:
    """The dtype's name, if that name alone rebuilds it (a category's name drops its categories)."""
    import pandas as pd

    text = str(dtype)
    try:
        same = pd.api.types.pandas_dtype(text) == dtype
    except (TypeError, ValueError):
        same = False
    if not same:
        raise TypeError(f"values of dtype {text!r} cannot be pickled portably; convert them (e.g. .astype(str)) first")
    return text


def _flatten_column(context: Any, series: Any) -> dict[str, Any]:
    return {"dtype": _dtype_text(series.dtype), "values": context.flatten(series.to_numpy(), reset=False)}


def _restore_column(context: Any, data: dict[str, Any], index: Any, name: Any) -> Any:
    import pandas as pd

    return pd.Series(context.restore(data["values"], reset=False), index=index, name=name, dtype=data["dtype"])


class SeriesHandler(BaseHandler):
    def flatten(self, obj: Any, data: dict[str, Any]) -> dict[str, Any]:
        _require_exact(obj, "Series")
        data.update(_flatten_column(self.context, obj))
        data["index"] = self.context.flatten(obj.index, reset=False)
        data["name"] = self.context.flatten(obj.name, reset=False)
        return data

    def restore(self, data: dict[str, Any]) -> Any:
        index = self.context.restore(data["index"], reset=False)
        return _restore_column(self.context, data, index, self.context.restore(data["name"], reset=False))


class DataFrameHandler(BaseHandler):
    def flatten(self, obj: Any, data: dict[str, Any]) -> dict[str, Any]:
        _require_exact(obj, "DataFrame")
        data["index"] = self.context.flatten(obj.index, reset=False)
        data["columns"] = self.context.flatten(obj.columns, reset=False)
        data["data"] = [_flatten_column(self.context, obj.iloc[:, i]) for i in range(obj.shape[1])]
        return data

    def restore(self, data: dict[str, Any]) -> Any:
        import pandas as pd

        index = self.context.restore(data["index"], reset=False)
        columns = [_restore_column(self.context, column, index, i) for i, column in enumerate(data["data"])]
        frame = pd.concat(columns, axis=1) if columns else pd.DataFrame(index=index)
        frame.columns = self.context.restore(data["columns"], reset=False)
        return frame


class TimestampHandler(BaseHandler):
    def flatten(self, obj: Any, data: dict[str, Any]) -> dict[str, Any]:
        data["iso"] = obj.isoformat()
        data["tz"] = None if obj.tz is None else str(obj.tz)
        return data

    def restore(self, data: dict[str, Any]) -> Any:
        import pandas as pd

        stamp = pd.Timestamp(data["iso"])
        if data["tz"] is not None and stamp.tz is not None:
            try:
                stamp = stamp.tz_convert(data["tz"])
            except Exception:
                pass  # a fixed offset with no zone name: the parsed offset is the same instant and offset
        return stamp


class TimedeltaHandler(BaseHandler):
    def flatten(self, obj: Any, data: dict[str, Any]) -> dict[str, Any]:
        data["ns"] = int(obj.value)  # nanoseconds in every pandas version
        return data

    def restore(self, data: dict[str, Any]) -> Any:
        import pandas as pd

        return pd.Timedelta(data["ns"], unit="ns")


def _require_exact(obj: Any, name: str) -> None:
    if type(obj).__name__ != name or not type(obj).__module__.startswith("pandas"):
        raise TypeError(f"{type(obj).__qualname__} is a subclass of pandas.{name}; pass a pandas.{name}")


def _register_pandas() -> None:
    import pandas as pd

    _register_numpy()
    register(pd.DataFrame, DataFrameHandler, base=True)
    register(pd.Series, SeriesHandler, base=True)
    register(pd.Index, IndexHandler, base=True)
    register(pd.Timestamp, TimestampHandler, base=True)
    register(pd.Timedelta, TimedeltaHandler, base=True)
