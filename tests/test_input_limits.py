"""Names within every limit Temporal puts on what is built from them, visibility queries that match a
name exactly, and functions and arguments that cannot work refused up front, saying what to do."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import csv
import dataclasses
import functools
import io
import itertools
import logging
import multiprocessing
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import pydantic
import pytest
from temporalio.client import Client
from temporalio.common import SearchAttributeKey, SearchAttributePair, TypedSearchAttributes
from temporalio.service import RPCError, RPCStatusCode

from multinode import Multinode, MultinodeSettings, get_deployed_function
from multinode._client import connect
from multinode._limits import (
    MAX_FUNCTION_NAME_LENGTH,
    MAX_KEYWORD_BYTES,
    MAX_PROJECT_AND_FUNCTION_LENGTH,
    MAX_PROJECT_NAME_LENGTH,
    MAX_TASK_QUEUE_BYTES,
    MAX_TEMPORAL_ID_BYTES,
    check_names,
)
from multinode._listing import quote_query_value
from multinode._protocol import SA_PROJECT, project_workflow_id, quota_workflow_id
from multinode._registry import list_projects, read_project
from multinode._serialization import decode_arguments, encode_arguments
from multinode.control_plane.registration import register_async
from multinode.errors import InvalidTasksFolderError, PayloadError, ProjectNotFoundError, ValidationError
from tests.helpers import assert_eventually, write_tasks

MN = str(Path(sys.executable).parent / "mn")
ROOT = Path(__file__).resolve().parent.parent

SIMPLE = """
from multinode import Multinode

mn = Multinode()

@mn.function()
def echo(value, times=1):
    return value * times
"""


def mn_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([MN, *args], capture_output=True, text=True, env=os.environ.copy(), timeout=300)


def defined_at_top_level(source: str) -> Any:
    """The function ``source`` defines, as if at the top level of a module (``__qualname__`` == name)."""
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # noqa: S102
    return next(v for k, v in namespace.items() if k != "__builtins__")


# --- the limits themselves ------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_every_id_built_from_names_fits_temporals_limits() -> None:
    config = (ROOT / "deploy" / "temporal" / "dynamicconfig" / "multinode.yaml").read_text()
    deployed = int(re.search(r"limit\.maxIDLength:\s*-\s*value:\s*(\d+)", config).group(1))  # type: ignore[union-attr]
    assert MAX_TEMPORAL_ID_BYTES <= deployed <= 1000  # the self-hosted server's limit, under Temporal's default
    assert len(project_workflow_id("p" * MAX_PROJECT_NAME_LENGTH)) <= MAX_TEMPORAL_ID_BYTES
    longest = quota_workflow_id("p" * 100, "f" * (MAX_PROJECT_AND_FUNCTION_LENGTH - 100))
    assert len(longest) == MAX_TEMPORAL_ID_BYTES
    assert max(MAX_PROJECT_NAME_LENGTH, MAX_FUNCTION_NAME_LENGTH) <= MAX_KEYWORD_BYTES
    assert MAX_TASK_QUEUE_BYTES <= 1000
    check_names("p" * 100, "f" * (MAX_PROJECT_AND_FUNCTION_LENGTH - 100))
    with pytest.raises(ValidationError, match=r"Rename the function to at most 138 characters"):
        check_names("p" * 100, "f" * (MAX_PROJECT_AND_FUNCTION_LENGTH - 99))


@pytest.mark.timeout(10)
def test_long_function_name_refused_at_decoration() -> None:
    mn = Multinode()
    at_limit = defined_at_top_level(f"def {'f' * MAX_FUNCTION_NAME_LENGTH}(x):\n    return x\n")
    assert mn.function()(at_limit)(3) == 3
    too_long = defined_at_top_level(f"def {'g' * (MAX_FUNCTION_NAME_LENGTH + 1)}(x):\n    return x\n")
    with pytest.raises(ValidationError, match=r"over the limit of 200 characters") as info:
        mn.function()(too_long)
    assert "Rename the function to at most 200 characters" in str(info.value)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400  # one line, the name cut short
    wide = defined_at_top_level(f"def {'é' * 101}(x):\n    return x\n")  # 101 characters, 202 bytes
    with pytest.raises(ValidationError, match=r"202 bytes in UTF-8\).* over the limit of 200"):
        mn.function()(wide)


@pytest.mark.timeout(60)
def test_bad_project_names_refused(settings: MultinodeSettings, tmp_path: Path) -> None:
    for name in ["p" * (MAX_PROJECT_NAME_LENGTH + 1), "good\n", "a b", "", "-x", "x' OR 'a'='a", 'a"b', "a\\b"]:
        with pytest.raises(ValidationError, match="Project name .* is not valid"):
            get_deployed_function(name, "echo")
    with pytest.raises(ValidationError, match=r"over the limit of 100 characters.*use 1-100 letters"):
        get_deployed_function("p" * 101, "echo")
    folder = write_tasks(tmp_path / "tasks", {"main.py": SIMPLE})
    with pytest.raises(ValidationError, match="over the limit of 100 characters"):
        asyncio.run(register_async(folder, "p" * 101, settings))


@pytest.mark.timeout(300)
def test_project_and_function_names_too_long_together_refused_at_registration(
    worker, settings: MultinodeSettings, tmp_path: Path
) -> None:
    project = f"long-{uuid.uuid4().hex[:8]}-" + "p" * 86  # 100 characters
    function = "f" * 150  # each name valid alone; together 250 > 238
    main = f"from multinode import Multinode\n\nmn = Multinode()\n\n@mn.function()\ndef {function}(x):\n    return x\n"
    write_tasks(tmp_path / "tasks", {"main.py": main})
    done = subprocess.run(
        [MN, "register", "tasks", "--project", project], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stdout + done.stderr
    line = done.stderr.rstrip("\n")
    assert "\n" not in line and line.startswith("error: tasks/main.py: function 'fff"), line
    assert "over the limit of 238" in line and "Rename the function to at most 138 characters" in line, line
    assert done.stdout == ""
    # Nothing was recorded: no project, no registry workflow.
    with pytest.raises(ProjectNotFoundError):
        asyncio.run(_read(settings, project))
    assert project not in asyncio.run(_projects(settings))
    with pytest.raises(RPCError) as info:
        asyncio.run(_describe(settings, project_workflow_id(project)))
    assert info.value.status == RPCStatusCode.NOT_FOUND
    # The same folder fits under a shorter project name.
    record = asyncio.run(register_async(tmp_path / "tasks", f"short-{uuid.uuid4().hex[:6]}", settings))
    assert list(record.functions) == [function]


async def _read(settings: MultinodeSettings, project: str) -> Any:
    return await read_project(await connect(settings), project)


async def _projects(settings: MultinodeSettings) -> list[str]:
    return await list_projects(await connect(settings))


async def _describe(settings: MultinodeSettings, workflow_id: str) -> Any:
    return await (await connect(settings)).get_workflow_handle(workflow_id).describe()


# --- visibility queries ---------------------------------------------------------------------------

INJECTIONS = ["echo' OR MultinodeProject = '{victim}", "'", 'ec"ho', "ec\\ho", "echo\n", "echo OR 1=1"]


@pytest.mark.timeout(300)
def test_names_with_quotes_never_list_another_projects_invocations(register, project_name: str) -> None:
    victim = f"victim-{uuid.uuid4().hex[:6]}"
    register({"main.py": SIMPLE}, project=victim)
    register({"main.py": SIMPLE})
    theirs = get_deployed_function(victim, "echo")
    their_id = theirs.start("x")
    assert theirs.await_result(their_id, timeout=120) == "x"
    assert_eventually(lambda: their_id in theirs.list().invocation_ids, message="the victim's invocation is listed")

    for text in [t.format(victim=victim) for t in INJECTIONS]:
        with pytest.raises(ValidationError, match="Function name .* is not valid"):
            get_deployed_function(project_name, text).list()
        done = mn_cli("list", text, "--project", project_name, "--json")
        assert done.returncode == 1 and done.stdout == "", done.stdout
        assert done.stderr.startswith("error: Function name") and done.stderr.count("\n") == 1, done.stderr
        assert "RPCError" not in done.stderr and their_id not in done.stderr
    done = mn_cli("list", "echo", "--project", f"{project_name}' OR MultinodeProject = '{victim}")
    assert done.returncode == 1 and done.stderr.startswith("error: Project name"), done.stderr
    done = mn_cli("list", "echo", "--project", project_name, "--status", f"RUNNING' OR MultinodeProject = '{victim}")
    assert done.returncode == 1 and "Unknown status" in done.stderr, done.stderr
    # The well-formed query lists this project's invocations only.
    done = mn_cli("list", "echo", "--project", project_name, "--json")
    assert done.returncode == 0, done.stderr
    assert their_id not in done.stdout and get_deployed_function(project_name, "echo").list().invocation_ids == []


PROBE_WORKFLOW = "MultinodeQuoteProbe"


@pytest.mark.timeout(120)
def test_quoted_values_match_exactly_themselves_on_the_dev_server(settings: MultinodeSettings) -> None:
    """Run against Temporal's own query parser and its SQLite visibility store."""
    values = ["plain", "it's", "x' OR MultinodeProject = 'plain", "a''b", "x' OR 'a'='a", "日本語 é", "50% _off_"]
    queue = f"probe-{uuid.uuid4().hex[:8]}"  # no worker: the workflows stay open until terminated

    async def probe() -> None:
        client = await connect(settings)
        ids: dict[str, str] = {}
        try:
            for value in values:
                pairs = [SearchAttributePair(SearchAttributeKey.for_keyword(SA_PROJECT), value)]
                handle = await client.start_workflow(
                    PROBE_WORKFLOW,
                    id=f"probe-{uuid.uuid4().hex}",
                    task_queue=queue,
                    search_attributes=TypedSearchAttributes(pairs),
                )
                ids[handle.id] = value
            for value in values:
                query = (
                    f"WorkflowType = {quote_query_value(PROBE_WORKFLOW)} AND TaskQueue = {quote_query_value(queue)} "
                    f"AND {SA_PROJECT} = {quote_query_value(value)}"
                )
                expected = [wf_id for wf_id, v in ids.items() if v == value]
                await _eventually_listed(client, query, expected, ids)
        finally:
            await asyncio.gather(*(client.get_workflow_handle(i).terminate() for i in ids), return_exceptions=True)

    asyncio.run(probe())
    # What Temporal cannot match exactly is refused, not quoted into a query that matches something else:
    # it trims quotes from both ends of a value, and on SQLite 'a\\b' matches the value a\\\\b.
    for value in ['a"b', "a\\b", "a\nb", "a\tb", "\x00", "'", "''", "'quoted'", "it'"]:
        with pytest.raises(ValidationError, match="cannot be searched for exactly"):
            quote_query_value(value)


async def _eventually_listed(client: Client, query: str, expected: list[str], ids: dict[str, str]) -> None:
    for _ in range(100):
        listed = [wf.id async for wf in client.list_workflows(query)]
        if sorted(listed) == sorted(expected):
            assert (await client.count_workflows(query)).count == len(expected)
            return
        assert set(listed) <= set(expected), f"{query} also matches {[ids.get(i) for i in listed]}"
        await asyncio.sleep(0.1)
    raise AssertionError(f"{query} never listed {expected}")


# --- what @mn.function decorates ------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_lambdas_methods_nested_and_async_functions_refused_at_decoration() -> None:
    mn = Multinode()
    with pytest.raises(ValidationError, match=r"cannot decorate a lambda: .*Define it with `def name\(\.\.\.\)`"):
        mn.function()(lambda x: x)

    with pytest.raises(ValidationError, match=r"cannot decorate .*Jobs\.run, a method of class Jobs: `self` would"):

        class Jobs:
            @mn.function()
            def run(self, x: int) -> int:
                return x

    with pytest.raises(ValidationError, match=r"cannot decorate a staticmethod \(.*Tools\.run\).*outside any class"):

        class Tools:
            @mn.function()  # type: ignore[arg-type]
            @staticmethod
            def run(x: int) -> int:
                return x

    with pytest.raises(
        ValidationError, match=r"a function defined inside test_.*\(\).*`def inner\(\.\.\.\)` at the top"
    ):

        @mn.function()
        def inner(x: int) -> int:
            return x

    with pytest.raises(ValidationError, match=r"run is async; .*define it with `def run\(\.\.\.\)` .*asyncio\.run"):
        mn.function()(defined_at_top_level("async def run(x):\n    return x\n"))
    with pytest.raises(ValidationError, match=r"run is an async generator; .*asyncio\.run"):
        mn.function()(defined_at_top_level("async def run(x):\n    yield x\n"))
    with pytest.raises(ValidationError, match=r"decorates functions defined with `def name\(\.\.\.\)`"):
        mn.function()(functools.partial(print, "x"))

    # Plain functions and generators at the top level of a module stay welcome.
    plain = mn.function()(defined_at_top_level("def plain(x, self=None):\n    return x\n"))
    steps = mn.function()(defined_at_top_level("def steps(n):\n    yield from range(n)\n"))
    assert plain(2) == 2 and list(steps(3)) == [0, 1, 2] and steps.config.is_generator


@pytest.mark.timeout(300)
def test_method_in_main_py_refused_at_registration(register, project_name: str) -> None:
    main = """
    from multinode import Multinode

    mn = Multinode()

    class Jobs:
        @mn.function()
        def run(self, x):
            return x
    """
    with pytest.raises(InvalidTasksFolderError, match=r"main\.py:6: @mn\.function cannot decorate Jobs\.run, a method"):
        register({"main.py": main})
    with pytest.raises(ProjectNotFoundError):
        get_deployed_function(project_name, "run").start(1)


# --- arguments ------------------------------------------------------------------------------------


class Holder:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = 0


class Counter:
    """Holds a lock but leaves it out of its pickled state, as pickling expects."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 3

    def __getstate__(self) -> dict[str, Any]:
        return {"count": self.count}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.lock = threading.Lock()


@dataclasses.dataclass
class Job:
    name: str
    weights: list[float]
    when: datetime
    budget: Decimal
    folder: Path


class Model(pydantic.BaseModel):
    name: str
    tags: list[str]


class Colour(Enum):
    RED = "red"


def _generator() -> Any:
    yield 1


async def _coroutine() -> None:
    return None


LOCK = "Create it inside the function instead"
ITERATOR = "Pass a list instead"
STREAM = "Pass its contents (bytes or str)"
RUNNING = "Pass the data it works on instead"
AWAITABLE = "Await it and pass its result"


@pytest.fixture
def stateful(tmp_path: Path) -> Any:
    """Every kind of value that must be refused: ``{kind: (value, how the error names it, its advice)}``."""
    opened = open(tmp_path / "data.txt", "w")  # noqa: SIM115
    sock = socket.socket()
    coroutine = _coroutine()
    cases = {
        "lock": (threading.Lock(), "a threading.Lock", LOCK),
        "rlock": (threading.RLock(), "a threading.RLock", LOCK),
        "condition": (threading.Condition(), "a threading.Condition", LOCK),
        "semaphore": (threading.Semaphore(), "a threading.Semaphore", LOCK),
        "event": (threading.Event(), "a threading.Event", LOCK),
        "generator": (_generator(), "a generator", ITERATOR),
        "map": (map(str, [1, 2]), "a map", ITERATOR),
        "filter": (filter(None, [1]), "a filter", ITERATOR),
        "zip": (zip([1], [2], strict=False), "a zip", ITERATOR),
        "endless": (itertools.count(), "an itertools.count", ITERATOR),
        "list iterator": (iter([1, 2]), "a list_iterator", ITERATOR),
        "file iterator": (csv.reader(io.StringIO("a,b\n")), "a _csv.reader", ITERATOR),
        "file": (opened, "an io.TextIOWrapper (an open file or stream)", STREAM),
        "stream": (io.BytesIO(b"data"), "an io.BytesIO (an open file or stream)", STREAM),
        "socket": (sock, "a socket.socket", "connect inside the function"),
        "thread": (threading.Thread(target=print), "a threading.Thread", RUNNING),
        "process": (multiprocessing.get_context("spawn").Process(target=print), "a multiprocessing.", RUNNING),
        "module": (os, "the module os", "Import it inside the function"),
        "coroutine": (coroutine, "a coroutine", AWAITABLE),
        "future": (concurrent.futures.Future(), "a concurrent.futures.", AWAITABLE),
    }
    yield cases
    opened.close()
    sock.close()
    coroutine.close()


@pytest.mark.timeout(30)
def test_each_stateful_argument_refused_naming_it(stateful: dict[str, tuple[Any, str, str]]) -> None:
    for kind, (value, described, advice) in stateful.items():
        with pytest.raises(PayloadError) as info:
            encode_arguments([1, value], {}, ["first", "job"])
        message = str(info.value)
        assert message.startswith(f"Argument 2 (`job`) is {described}"), (kind, message)
        assert advice in message and "\n" not in message, (kind, message)
        with pytest.raises(PayloadError, match=rf"^Keyword argument `options` is {re.escape(described)}"):
            encode_arguments([], {"options": value}, [])
    with pytest.raises(PayloadError, match=r"^Argument 1 holds a threading\.Lock at `\.lock`: "):
        encode_arguments([Holder()], {}, [])
    with pytest.raises(PayloadError, match=r"^Argument 1 \(`jobs`\) holds a generator at `\['todo'\]\[1\]`"):
        encode_arguments([{"todo": [1, _generator()]}], {}, ["jobs"])
    with pytest.raises(PayloadError, match=r"holds a threading\.Lock at `\[0\]\.lock`"):
        encode_arguments([(Holder(),)], {}, [])


@pytest.mark.timeout(30)
def test_ordinary_values_accepted() -> None:
    job = Job("a", [0.5, 1.5], datetime(2024, 5, 1, 12, tzinfo=timezone.utc), Decimal("1.25"), Path("/data/x"))
    values = [
        1,
        "text",
        b"\x00bytes",
        None,
        {"nested": {"dict": [1, (2, 3), {"deep": [True, 1.5]}]}},
        job,
        Model(name="m", tags=["t"]),
        datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        date(2024, 1, 2),
        timedelta(minutes=5),
        Decimal("3.14"),
        Path("/tmp/file.txt"),
        uuid.UUID(int=7),
        Colour.RED,
        {1, 2},
        frozenset({"a"}),
        collections.deque([1, 2]),
        collections.OrderedDict(a=1),
        range(3),
    ]
    text = encode_arguments(values, {"logger": logging.getLogger("test_input_limits")}, [])
    args, kwargs = decode_arguments(text, [])
    assert args == values
    assert kwargs["logger"] is logging.getLogger("test_input_limits")
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    (decoded_array, counter), _ = decode_arguments(encode_arguments([array, Counter()], {}, []), [])
    assert np.array_equal(decoded_array, array) and decoded_array.dtype == np.float32
    assert counter.count == 3 and not counter.lock.locked()  # its own __getstate__ leaves the lock out


@pytest.mark.timeout(300)
def test_stateful_arguments_refused_at_start(register, project_name: str) -> None:
    register({"main.py": SIMPLE})
    fn = get_deployed_function(project_name, "echo")
    with pytest.raises(PayloadError, match=r"^Argument 1 \(`value`\) is a threading\.Lock: .*inside the function"):
        fn.start(threading.Lock())
    with pytest.raises(PayloadError, match=r"^Keyword argument `times` is an itertools\.count: .*Pass a list"):
        fn.start("x", times=itertools.count())
    with pytest.raises(PayloadError, match=r"^Argument 1 \(`value`\) holds a threading\.Lock at `\.lock`"):
        fn.call_remote(Holder())
    with pytest.raises(PayloadError, match=r"^Argument 1 \(`value`\) is a generator"):
        list(fn.map([1, _generator()]))
    with pytest.raises(PayloadError, match=r"^Argument 2 \(`times`\) is a map"):
        list(fn.starmap([("a", 1), ("b", map(int, "12"))]))
    assert fn.list().invocation_ids == []  # nothing started, not even the good items of the map
    assert fn.call_remote([1, 2], times=2) == [1, 2, 1, 2]
