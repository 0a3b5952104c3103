"""Arguments and results cross between an application and a tasks folder with other library versions.

The unit tests run in this process (numpy 2, pandas >= 2); the Temporal tests register a tasks folder
pinned to numpy 1 and pandas 2.0, whose containers decode what this process encodes and back.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonpickle
import numpy as np
import pandas as pd
import pytest

from multinode import _serialization, get_deployed_function
from multinode._serialization import (
    MAX_ARGUMENTS_CHARS,
    MAX_PAYLOAD_CHARS,
    decode,
    decode_arguments,
    encode,
    encode_arguments,
)
from multinode.errors import InvocationFailedError, PayloadError

# numpy 1.24 is the last numpy without numpy._core (1.26 added it so that it can read numpy 2's
# pickles); it has no wheels for Python 3.12 and later.
NUMPY_1 = "1.24.4" if sys.version_info < (3, 12) else "1.26.4"
PANDAS_2 = "2.0.3" if sys.version_info < (3, 12) else "2.2.3"


class AppOnlyPoint:
    """Defined here only: the tasks folder has no class of this name."""

    def __init__(self, x: int, y: int) -> None:
        self.x = x
        self.y = y


class Celsius(np.ndarray):
    """An ndarray subclass: not covered by the portable ndarray form, so pickled by ``__reduce__``."""


def round_trip(value: Any) -> Any:
    return decode(encode(value, what="The value"))


# --- unit: numpy and pandas values -----------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.arange(900, dtype=np.float64).reshape(30, 30),
        np.array([1, 2, 3], dtype=np.int32),
        np.arange(200.0).reshape(10, 20)[:, ::3],  # a non-contiguous view
        np.asfortranarray(np.arange(40.0).reshape(5, 8)),
        np.arange(30, dtype=">i4"),
        np.array(["a", "bc"]),
        np.array(["2020-01-01T00:00:00.000000001", "NaT"], dtype="datetime64[ns]"),
        np.array([(1, 2.5), (3, 4.5)], dtype=[("a", "<i4"), ("b", "<f8")]),
        np.zeros((0, 3)),
        np.array([True, False]),
    ],
    ids=lambda a: f"{a.dtype}-{a.shape}",
)
def test_arrays_round_trip_with_dtype_and_shape(array: np.ndarray) -> None:
    text = encode(array, what="The value")
    assert "numpy._core" not in text and "py/reduce" not in text
    got = decode(text)
    assert type(got) is np.ndarray and got.dtype == array.dtype and got.shape == array.shape
    np.testing.assert_array_equal(got, array)


def test_object_arrays_keep_their_shape_and_items() -> None:
    array = np.empty(3, dtype=object)
    for i, item in enumerate([[1, 2], "x", AppOnlyPoint(1, 2)]):
        array[i] = item
    got = round_trip(array)
    assert got.shape == (3,) and got[0] == [1, 2] and got[1] == "x" and (got[2].x, got[2].y) == (1, 2)


@pytest.mark.parametrize(
    "scalar",
    [np.float64(1.5), np.bool_(True), np.int8(-3), np.complex128(1 + 2j), np.str_("hé"), np.longdouble(1) / 3],
    ids=repr,
)
def test_numpy_scalars_round_trip(scalar: np.generic) -> None:
    got = round_trip(scalar)
    assert type(got) is type(scalar) and got == scalar


def test_dtypes_and_datetimes_round_trip() -> None:
    assert round_trip(np.dtype("f8")) == np.dtype("f8")
    assert round_trip(np.dtype([("a", "<i4")])) == np.dtype([("a", "<i4")])
    stamp = np.datetime64("2020-01-01T00:00:00.000000001", "ns")
    assert round_trip(stamp) == stamp


def test_numpy_1_forms_decode_under_numpy_2() -> None:
    # Encoded by this module under numpy 1.24: "numpy.bool_" and the unimportable "numpy.dtype[float64]".
    text = (
        '{"flag": {"py/object": "numpy.bool_", "dtype": "|b1", "value": true}, "dtype": {"py/object": '
        '"numpy.dtype[float64]", "dtype": "<f8"}, "grid": {"py/object": "numpy.ndarray", "dtype": "<i8", '
        '"shape": [4, 5], "bytes": "eJwtxUkCgBAAAECpiKLt/391MHOZEKbF0as3707OPlxcffpyc/ftx68//x4qMAC/"}}'
    )
    got = decode(text)
    assert got["flag"] is np.True_ and got["dtype"] == np.dtype("f8")
    np.testing.assert_array_equal(got["grid"], np.arange(20).reshape(4, 5))


def test_pandas_values_round_trip() -> None:
    frame = pd.DataFrame(
        {"n": np.array([1, 2, 3], dtype="int8"), "x": [1.5, 2.5, np.nan], "when": pd.date_range("2020", periods=3)},
        index=pd.Index(["a", "b", "a"], name="key"),
    )
    pd.testing.assert_frame_equal(round_trip(frame), frame)
    series = pd.Series([1.0, 2.0], index=pd.MultiIndex.from_tuples([("x", 1), ("y", 2)]), name="s")
    pd.testing.assert_series_equal(round_trip(series), series)
    pd.testing.assert_index_equal(round_trip(pd.RangeIndex(2, 10, 2, name="r")), pd.RangeIndex(2, 10, 2, name="r"))
    stamp = pd.Timestamp("2020-01-01T12:00:00.000000001", tz="Europe/Paris")
    assert round_trip(stamp) == stamp and str(round_trip(stamp).tz) == "Europe/Paris"
    assert round_trip(pd.Timedelta("1 day 3ns")) == pd.Timedelta("1 day 3ns")


def test_pandas_2_frame_decodes_with_its_dtypes() -> None:
    # Encoded by this module under pandas 2.2 / numpy 1.26. jsonpickle.ext.pandas would code int8 as
    # an abbreviation that means another dtype in another pandas version.
    text = (
        '{"py/object": "pandas.core.frame.DataFrame", "index": {"py/object": "pandas.core.indexes.base.Index", '
        '"dtype": "object", "values": {"py/object": "numpy.ndarray", "dtype": "|O", "shape": [2], "items": '
        '["a", "b"]}, "names": [null]}, "columns": {"py/object": "pandas.core.indexes.base.Index", "dtype": '
        '"object", "values": {"py/object": "numpy.ndarray", "dtype": "|O", "shape": [2], "items": ["n", "x"]}, '
        '"names": [null]}, "data": [{"dtype": "int8", "values": {"py/object": "numpy.ndarray", "dtype": "|i1", '
        '"shape": [2], "values": [1, 2]}}, {"dtype": "float64", "values": {"py/object": "numpy.ndarray", '
        '"dtype": "<f8", "shape": [2], "values": [0.5, 1.5]}}]}'
    )
    frame = decode(text)
    assert list(frame.columns) == ["n", "x"] and list(frame.index) == ["a", "b"]
    assert str(frame["n"].dtype) == "int8" and frame["x"].tolist() == [0.5, 1.5]


def test_plain_data_does_not_import_numpy_or_pandas() -> None:
    code = (
        "import multinode, sys; from multinode import _serialization as s; "
        "s.decode(s.encode([1, {'a': 'numpy'}], what='x')); "
        "s.decode_arguments(s.encode_arguments([1], {'k': 'pandas'}, ['a']), ['a']); "
        "assert 'numpy' not in sys.modules and 'pandas' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- unit: what cannot be rebuilt raises --------------------------------------------------------


def test_a_reduce_whose_function_is_missing_raises_instead_of_becoming_a_list() -> None:
    # numpy 2's own pickle of an array, as numpy 1.24 (no numpy._core) sees it.
    text = json.dumps(
        {
            "py/reduce": [
                {"py/function": "numpy._core_missing.multiarray._reconstruct"},
                {"py/tuple": [{"py/type": "numpy.ndarray"}, {"py/tuple": [0]}, {"py/b64": "Yg=="}]},
            ]
        }
    )
    assert jsonpickle.decode(text, keys=True, on_missing="error") == []  # what jsonpickle does alone
    with pytest.raises(PayloadError) as info:
        decode(text)
    message = str(info.value)
    assert "numpy.ndarray rebuilt by calling numpy._core_missing.multiarray._reconstruct" in message
    assert "which this program does not define" in message and f"numpy {np.__version__} is installed" in message


@pytest.mark.parametrize(
    ("node", "named"),
    [
        ({"py/object": "main.Report", "total": 3}, "instance of main.Report, which this program does not define"),
        ([{"py/type": "nowhere.Thing"}], "the class nowhere.Thing"),
        ({"k": {"py/function": "nowhere.fn"}}, "a reference to nowhere.fn"),
        ({"py/mod": "nowhere/nowhere"}, "the module nowhere/nowhere"),
        ({"py/set": [{"py/object": "main.Report"}]}, "main.Report"),
        ({"py/tuple": [{"py/reduce": [{"py/function": "nowhere.make"}, {"py/tuple": []}]}]}, "nowhere.make"),
        ({"py/object": "numpy.ndarray", "dtype": "NoSuchType", "shape": [1], "values": [1]}, "numpy.ndarray"),
    ],
)
def test_missing_names_raise_payload_error_naming_them(node: Any, named: str) -> None:
    with pytest.raises(PayloadError, match="cannot be rebuilt here") as info:
        decode(json.dumps(node))
    assert named in str(info.value)


def test_decode_arguments_names_the_argument_at_fault() -> None:
    text = json.dumps({"args": [1, {"py/object": "main.Report"}], "kwargs": {}})
    with pytest.raises(PayloadError, match=r"^Argument 2 \(`report`\) cannot be rebuilt here: .*main\.Report"):
        decode_arguments(text, ["n", "report"])
    text = json.dumps({"args": [], "kwargs": {"extra": {"py/function": "nowhere.fn"}}})
    with pytest.raises(PayloadError, match=r"^Keyword argument `extra` cannot be rebuilt here"):
        decode_arguments(text, [])


def test_values_jsonpickle_loses_are_rejected_at_encode() -> None:
    with pytest.raises(PayloadError, match=r"^Argument 1 \(`f`\) cannot be pickled with jsonpickle: a function"):
        encode_arguments([lambda: 1], {}, ["f"])


# --- unit: the envelope and the size limits -------------------------------------------------------


def test_the_envelope_is_one_jsonpickle_document() -> None:
    shared = AppOnlyPoint(1, 2)
    text = encode_arguments([shared, shared], {"k": [1]}, ["a", "b"])
    # What containers of earlier versions decode: one document for all the arguments.
    assert text == jsonpickle.encode({"args": [shared, shared], "kwargs": {"k": [1]}}, keys=True, warn=False)
    args, kwargs = decode_arguments(text, ["a", "b"])
    assert args[0] is args[1] and (args[0].x, args[0].y) == (1, 2) and kwargs == {"k": [1]}


def pickled(size: int) -> str:
    """A string whose pickled form (quotes included) is ``size`` characters."""
    value = "x" * (size - 2)
    assert len(jsonpickle.encode(value, keys=True)) == size
    return value


def test_each_argument_may_take_the_limit() -> None:
    encode_arguments([1, pickled(MAX_PAYLOAD_CHARS)], {}, ["n", "distances"])
    encode_arguments([pickled(150_000), pickled(150_000)], {}, ["a", "b"])
    with pytest.raises(PayloadError) as info:
        encode_arguments([1, pickled(MAX_PAYLOAD_CHARS + 1)], {}, ["n", "distances"])
    assert str(info.value).startswith("Argument 2 (`distances`) takes 250,001 characters when pickled")
    assert "over the limit of 250,000" in str(info.value)
    with pytest.raises(PayloadError, match=r"^Keyword argument `x` takes 250,001 characters"):
        encode_arguments([], {"x": pickled(MAX_PAYLOAD_CHARS + 1)}, [])
    with pytest.raises(PayloadError, match=r"^Argument 3 takes"):  # beyond the named ones (*args)
        encode_arguments([1, 2, pickled(MAX_PAYLOAD_CHARS + 1)], {}, ["a"])


def test_all_arguments_together_have_a_limit() -> None:
    third = MAX_ARGUMENTS_CHARS // 3
    encode_arguments([pickled(third)] * 3, {}, [])
    with pytest.raises(PayloadError) as info:
        encode_arguments([pickled(200_000)] * 3, {}, [])
    message = str(info.value)
    assert message.startswith("The arguments take 600,000 characters together when pickled")
    assert f"over the limit of {MAX_ARGUMENTS_CHARS:,} for all the arguments" in message


def test_result_over_the_limit_names_it_in_the_singular() -> None:
    with pytest.raises(PayloadError, match=r"^The result takes 250,001 characters when pickled"):
        encode(pickled(MAX_PAYLOAD_CHARS + 1), what="The result")


# --- Temporal: a tasks folder on numpy 1 -----------------------------------------------------------

NUMPY_1_TASKS = {
    "requirements.txt": f"numpy=={NUMPY_1}\npandas=={PANDAS_2}\n",
    "main.py": """
    import numpy as np
    import pandas as pd
    from multinode import Multinode

    mn = Multinode()

    @mn.function()
    def tour(n, distances):
        # Indexing with a tuple is what failed on the empty list arrays used to become.
        length = sum(distances[i, (i + 1) % n] for i in range(n))
        return {
            "numpy": np.__version__,
            "length": length,
            "doubled": distances * 2,
            "ints": np.arange(n, dtype=np.int32),
            "flag": np.bool_(length > 0),
            "dtype": distances.dtype,
        }

    @mn.function()
    def add_total(frame):
        frame = frame.assign(total=frame["n"] * frame["x"])
        return {"pandas": pd.__version__, "frame": frame, "total": frame["total"]}

    @mn.function()
    def echo(values):
        return values

    def _rebuild(n):
        return Opaque(n)

    class Opaque:
        def __init__(self, n):
            self.n = n

        def __reduce__(self):
            return (_rebuild, (self.n,))

    @mn.function()
    def opaque(n):
        return Opaque(n)
    """,
}


def test_arrays_cross_numpy_majors_both_ways(register, project_name: str) -> None:
    assert np.__version__.startswith("2.")
    register(NUMPY_1_TASKS)
    distances = np.random.default_rng(7).random((30, 30))
    fn = get_deployed_function(project_name, "tour")
    result = fn.await_result(fn.start(30, distances), timeout=180)
    assert result["numpy"] == NUMPY_1
    assert type(result["length"]) is np.float64
    assert result["length"] == pytest.approx(sum(distances[i, (i + 1) % 30] for i in range(30)))
    assert type(result["doubled"]) is np.ndarray and result["doubled"].dtype == np.float64
    np.testing.assert_array_equal(result["doubled"], distances * 2)
    np.testing.assert_array_equal(result["ints"], np.arange(30, dtype=np.int32))
    assert result["ints"].dtype == np.int32
    assert result["flag"] is np.True_ and result["dtype"] == np.dtype("float64")


def test_pandas_frames_cross_pandas_majors_both_ways(register, project_name: str) -> None:
    register(NUMPY_1_TASKS)
    frame = pd.DataFrame({"n": np.array([1, 2, 3], dtype="int8"), "x": [0.5, 1.5, 2.5]}, index=[10, 20, 30])
    fn = get_deployed_function(project_name, "add_total")
    result = fn.await_result(fn.start(frame), timeout=180)
    assert result["pandas"] == PANDAS_2
    expected = frame.assign(total=frame["n"] * frame["x"])
    # The column labels keep pandas 2's object dtype; pandas 3 would have made them strings.
    pd.testing.assert_frame_equal(result["frame"], expected, check_column_type=False)
    pd.testing.assert_series_equal(result["total"], expected["total"])


def test_values_the_other_side_cannot_rebuild_raise_payload_error(register, project_name: str) -> None:
    register(NUMPY_1_TASKS)
    echo = get_deployed_function(project_name, "echo")
    # jsonpickle's own pickle of an ndarray subclass names numpy._core, which numpy 1.24 lacks:
    # the container used to receive [] here.
    with pytest.raises(InvocationFailedError) as info:
        echo.await_result(echo.start(np.arange(4.0).view(Celsius)), timeout=180)
    assert info.value.error_type == "PayloadError"
    message = str(info.value)
    assert "Argument 1 (`values`) cannot be rebuilt here" in message
    assert f"{__name__}.Celsius rebuilt by calling numpy._core.multiarray._reconstruct" in message
    if NUMPY_1 == "1.24.4":
        assert "numpy 1.24.4 is installed here" in message

    with pytest.raises(InvocationFailedError) as info:
        echo.await_result(echo.start(AppOnlyPoint(1, 2)), timeout=180)
    assert info.value.error_type == "PayloadError"
    assert f"instance of {__name__}.AppOnlyPoint, which this program does not define" in str(info.value)

    opaque = get_deployed_function(project_name, "opaque")
    with pytest.raises(PayloadError, match=r"rebuilt by calling main\._rebuild, which this program does not define"):
        opaque.await_result(opaque.start(3), timeout=180)


def test_argument_size_limits_end_to_end(register, project_name: str) -> None:
    register(
        {
            "main.py": """
            from multinode import Multinode

            mn = Multinode()

            @mn.function()
            def sizes(a, b=""):
                return [len(a), len(b)]
            """
        }
    )
    fn = get_deployed_function(project_name, "sizes")
    at_limit = fn.start(pickled(MAX_PAYLOAD_CHARS))
    two = fn.start(pickled(150_000), b=pickled(150_000))
    assert fn.await_result(at_limit, timeout=120) == [MAX_PAYLOAD_CHARS - 2, 0]
    assert fn.await_result(two, timeout=120) == [149_998, 149_998]
    with pytest.raises(PayloadError, match=r"^Argument 1 \(`a`\) takes 250,001 characters"):
        fn.start(pickled(MAX_PAYLOAD_CHARS + 1))
    with pytest.raises(PayloadError, match=r"^Keyword argument `b` takes 250,001 characters"):
        fn.start("a", b=pickled(MAX_PAYLOAD_CHARS + 1))


def test_a_bytearray_arrives_whole() -> None:
    value = {"data": bytearray(b"\x00multinode\xff" * 100)}
    assert _serialization.decode(_serialization.encode(value, what="x")) == value


@pytest.mark.parametrize(
    "payload",
    [
        '{"py/reduce": [{"py/function": "os.system"}, {"py/tuple": ["touch MARKER"]}]}',
        '{"py/object": "os.system", "py/initargs": {"py/tuple": ["touch MARKER"]}}',
        '{"py/reduce": [{"py/type": "subprocess.Popen"}, {"py/tuple": [["touch", "MARKER"]]}]}',
        '{"py/function": "os.system"}',
        '{"py/repr": "os/os.system(\'touch MARKER\')"}',
    ],
)
def test_a_payload_cannot_make_its_reader_run_code(payload: str, tmp_path: Path, monkeypatch) -> None:
    """A function's result is read by the application: it must not be able to run code there."""
    monkeypatch.chdir(tmp_path)
    try:
        value = _serialization.decode(payload)
    except PayloadError as exc:
        assert "may not make its reader call" in str(exc) or "cannot be rebuilt" in str(exc)
    else:
        assert not callable(value), value
    assert not (tmp_path / "MARKER").exists()
