"""The tasks side: ``Multinode()`` and the ``@mn.function(...)`` decorator."""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from datetime import timedelta
from typing import Any, Generic, ParamSpec, Protocol, TypeVar, cast, overload

from multinode import _context
from multinode._config import (
    DEFAULT_CPU,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MEMORY,
    DEFAULT_TIMEOUT,
    OPTIONS,
    FunctionConfig,
    build_function_config,
)
from multinode._handle import DeployedFunction
from multinode._limits import check_function_name
from multinode._protocol import Parameter
from multinode._settings import MultinodeSettings
from multinode._types import Invocation, InvocationIdsList
from multinode.errors import ConfigurationError, ValidationError

_instances: list[Multinode] = []


P = ParamSpec("P")
T = TypeVar("T")
R = TypeVar("R")
Y = TypeVar("Y")


class Function(Generic[P, T, R]):
    """A function decorated with ``@mn.function()``.

    Calling it runs it here, unchanged. Its handle methods (``.start``, ``.get``, ...) act on the
    registered project: inside an invocation, the version that runs it; elsewhere, the latest.

    Typed after the decorated function: ``P`` its parameters, ``T`` what calling it returns, ``R`` an
    invocation's result (``T`` itself, or for a generator the type it yields: its last yield is the
    result), so that ``fn.start(...)``, ``fn.call_remote(...)`` and ``fn.map(...)`` are checked.
    """

    def __init__(self, fn: Callable[P, T], config: FunctionConfig, owner: Multinode) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name: str = fn.__name__
        self.config = config
        self._owner = owner

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"<multinode.Function {self.name}>"

    def parameters(self) -> list[Parameter]:
        return [
            Parameter(name=p.name, kind=p.kind.name, has_default=p.default is not inspect.Parameter.empty)
            for p in inspect.signature(self.fn).parameters.values()
        ]

    def _settings(self) -> MultinodeSettings:
        return self._owner.settings or MultinodeSettings.from_env()

    def deployed(self) -> DeployedFunction:
        running = _context.current()
        project = self._owner.project_name or (running.project_name if running else self._settings().project)
        if not project:
            raise ConfigurationError(
                f"{self.name}: no project to invoke it in. Pass it to Multinode(project_name=...), set "
                "MULTINODE_PROJECT, or use get_deployed_function(project_name=..., function_name=...)."
            )
        version = running.version_id if running is not None and running.project_name == project else None
        return DeployedFunction(project, self.name, version, settings=self._owner.settings)

    # The handle methods, delegated (kept explicit so they show in help() and IDEs, typed after the function).
    def start(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return self.deployed().start(*args, **kwargs)

    async def start_async(self, *args: P.args, **kwargs: P.kwargs) -> str:
        return await self.deployed().start_async(*args, **kwargs)

    def get(self, invocation_id: str) -> Invocation:
        return self.deployed().get(invocation_id)

    async def get_async(self, invocation_id: str) -> Invocation:
        return await self.deployed().get_async(invocation_id)

    def cancel(self, invocation_id: str) -> None:
        self.deployed().cancel(invocation_id)

    async def cancel_async(self, invocation_id: str) -> None:
        await self.deployed().cancel_async(invocation_id)

    def list(self, offset: str | None = None) -> InvocationIdsList:
        return self.deployed().list(offset)

    async def list_async(self, offset: str | None = None) -> InvocationIdsList:
        return await self.deployed().list_async(offset)

    def await_result(self, invocation_id: str, timeout: float | None = None) -> R:
        result: R = self.deployed().await_result(invocation_id, timeout)
        return result

    async def await_result_async(self, invocation_id: str, timeout: float | None = None) -> R:
        result: R = await self.deployed().await_result_async(invocation_id, timeout)
        return result

    def call_remote(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = self.deployed().call_remote(*args, **kwargs)
        return result

    async def call_remote_async(self, *args: P.args, **kwargs: P.kwargs) -> R:
        result: R = await self.deployed().call_remote_async(*args, **kwargs)
        return result

    def logs(self, invocation_id: str, execution_id: str | None = None) -> str:
        return self.deployed().logs(invocation_id, execution_id)

    async def logs_async(self, invocation_id: str, execution_id: str | None = None) -> str:
        return await self.deployed().logs_async(invocation_id, execution_id)

    # The arguments of .map/.starmap cannot be checked against P (an iterable of single arguments or of
    # argument tuples); their results are typed.
    def map(self, iterable: Iterable[Any]) -> Iterator[R]:
        return self.deployed().map(iterable)

    def map_async(self, iterable: Iterable[Any]) -> AsyncIterator[R]:
        return self.deployed().map_async(iterable)

    def starmap(self, iterable: Iterable[Iterable[Any]]) -> Iterator[R]:
        return self.deployed().starmap(iterable)

    def starmap_async(self, iterable: Iterable[Iterable[Any]]) -> AsyncIterator[R]:
        return self.deployed().starmap_async(iterable)


class _Decorator(Protocol):
    """What ``mn.function(...)`` returns: a generator function's (annotated ``Iterator[Y]`` or
    ``Generator[Y, ...]``) result type is what it yields."""

    @overload
    def __call__(self, fn: Callable[P, Generator[Y, Any, Any]]) -> Function[P, Generator[Y, Any, Any], Y]: ...

    @overload
    def __call__(self, fn: Callable[P, Iterator[Y]]) -> Function[P, Iterator[Y], Y]: ...

    @overload
    def __call__(self, fn: Callable[P, T]) -> Function[P, T, T]: ...


class Multinode:
    """Entry point of a tasks folder: ``mn = Multinode()``, then ``@mn.function(...)``.

    ``project_name`` is only needed to invoke the decorated functions from outside an invocation;
    the project of a tasks folder is named at ``mn register PATH --project NAME``.
    """

    def __init__(self, project_name: str | None = None, *, settings: MultinodeSettings | None = None) -> None:
        self.project_name = project_name
        self.settings = settings
        self.functions: dict[str, Function[..., Any, Any]] = {}
        _instances.append(self)

    def function(
        self,
        _fn: Any = None,
        *,
        cpu: float = DEFAULT_CPU,
        memory: str = DEFAULT_MEMORY,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        timeout: timedelta = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        **unknown: Any,
    ) -> _Decorator:
        """Declare an asynchronous task; every option is checked here, at decoration time."""
        if unknown:
            name = next(iter(unknown))
            close = difflib.get_close_matches(name, OPTIONS, n=1)
            raise ValidationError(
                f"@mn.function has no option {name!r}.{f' Did you mean {close[0]}?' if close else ''} "
                f"Its options are {', '.join(OPTIONS)}."
            )
        if _fn is not None:
            raise ValidationError(
                "@mn.function takes keyword options only. Did you forget parentheses? Write @mn.function()."
            )

        def decorate(fn: Callable[..., Any]) -> Function[..., Any, Any]:
            if isinstance(fn, (staticmethod, classmethod)):
                inner = fn.__func__
                raise ValidationError(
                    f"@mn.function cannot decorate a {type(fn).__name__} ({inner.__qualname__}): a Multinode "
                    f"function is a plain function. Define it with `def {inner.__name__}(...)` at the top level "
                    "of main.py, outside any class."
                )
            if not callable(fn) or inspect.isclass(fn) or not isinstance(getattr(fn, "__name__", None), str):
                raise ValidationError(
                    f"@mn.function() decorates functions defined with `def name(...)` at the top level of main.py, "
                    f"not {fn!r}."
                )
            if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
                kind = "an async generator" if inspect.isasyncgenfunction(fn) else "async"
                raise ValidationError(
                    f"{fn.__name__} is {kind}; Multinode functions are plain (sync) functions or generators: "
                    f"define it with `def {fn.__name__}(...)` and run async code inside it with asyncio.run(...)."
                )
            config = build_function_config(
                cpu=cpu,
                memory=memory,
                max_concurrency=max_concurrency,
                timeout=timeout,
                max_retries=max_retries,
                is_generator=inspect.isgeneratorfunction(fn),
            )
            _check_definition(fn)
            check_function_name(fn.__name__)
            if fn.__name__ in self.functions:
                raise ValidationError(f"Two functions are named {fn.__name__!r}; function names must be unique.")
            function: Function[..., Any, Any] = Function(fn, config, self)
            self.functions[fn.__name__] = function
            return function

        return cast(_Decorator, decorate)


def _check_definition(fn: Callable[..., Any]) -> None:
    """Refuse what registration and containers cannot find by importing main.py: a lambda (its name is
    ``<lambda>``), a method (its ``self`` would become an argument) and a function defined inside another
    function (declared only when that function runs)."""
    name: str = fn.__name__
    qualname: str = getattr(fn, "__qualname__", name)
    if name == "<lambda>":
        raise ValidationError(
            "@mn.function cannot decorate a lambda: a function is registered and invoked by its name. Define it "
            "with `def name(...)` at the top level of main.py."
        )
    enclosing, _, local_path = qualname.rpartition("<locals>.")
    if "." in local_path or (not enclosing and qualname != name):
        owner = local_path.rpartition(".")[0]
        raise ValidationError(
            f"@mn.function cannot decorate {qualname}, a method of class {owner}: `self` would become an "
            f"argument. Define it with `def {name}(...)` at the top level of main.py, outside any class."
        )
    if enclosing:
        raise ValidationError(
            f"@mn.function cannot decorate {qualname}, a function defined inside {enclosing.rstrip('.')}(): "
            f"registration and containers find functions by importing main.py. Define it with `def {name}(...)` "
            "at the top level of main.py (a decorator's wrapper: decorate it with @functools.wraps(fn))."
        )


def declared_functions() -> dict[str, Function[..., Any, Any]]:
    """Every function declared by any ``Multinode`` instance in this process."""
    found: dict[str, Function[..., Any, Any]] = {}
    for instance in _instances:
        for name, function in instance.functions.items():
            if name in found and found[name] is not function:
                raise ValidationError(f"Two functions are named {name!r}; function names must be unique.")
            found[name] = function
    return found


def get_deployed_function(
    project_name: str,
    function_name: str,
    version_id: str | None = None,
    *,
    settings: MultinodeSettings | None = None,
) -> DeployedFunction:
    """A handle on a registered function (the latest version unless ``version_id`` is given).

    Nothing is contacted until a method is called; only a malformed or too long name fails here
    (``ValidationError``, see ``multinode._limits``).
    """
    return DeployedFunction(project_name, function_name, version_id, settings=settings)
