"""Function options of ``@mn.function``: defaults, limits and validation at decoration time."""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from multinode.errors import ConfigurationError

DEFAULT_CPU: float = 0.1
"""Virtual CPUs per execution when ``cpu`` is not given."""
MAX_CPU: float = 16
"""Largest ``cpu`` a function may ask for (the largest Fargate size)."""
DEFAULT_MEMORY: str = "256 MiB"
"""RAM per execution when ``memory`` is not given."""
MAX_MEMORY_MIB: int = 64 * 1024
"""Largest ``memory`` a function may ask for, in MiB (64 GiB)."""
DEFAULT_TIMEOUT: timedelta = timedelta(hours=1)
"""Longest an execution may run when ``timeout`` is not given."""
MAX_TIMEOUT: timedelta = timedelta(hours=24)
"""Largest ``timeout`` a function may ask for."""
DEFAULT_MAX_CONCURRENCY: int = 10
"""Executions of one function that may run at once when ``max_concurrency`` is not given."""
MAX_MAX_CONCURRENCY: int = 100
"""Largest ``max_concurrency`` a function may ask for."""
DEFAULT_MAX_RETRIES: int = 0
"""Further attempts after a failed one when ``max_retries`` is not given."""
MAX_MAX_RETRIES: int = 50
"""Largest ``max_retries`` a function may ask for."""

_UNITS_MIB = {
    "b": 1 / (1024 * 1024),
    "kb": 1000 / (1024 * 1024),
    "kib": 1 / 1024,
    "mb": 1000 * 1000 / (1024 * 1024),
    "mib": 1,
    "gb": 1000**3 / (1024 * 1024),
    "gib": 1024,
    "tb": 1000**4 / (1024 * 1024),
    "tib": 1024 * 1024,
}
_MEMORY_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([A-Za-z]+)\s*$")


@dataclass(frozen=True)
class FunctionConfig:
    """The validated options of one function, as recorded in the registry and sent to workflows.

    A plain dataclass (not pydantic) because it travels through Temporal's default converter and is
    read inside the workflow sandbox.
    """

    cpu: float = DEFAULT_CPU
    memory_mib: int = 256
    timeout_seconds: float = DEFAULT_TIMEOUT.total_seconds()
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    max_retries: int = DEFAULT_MAX_RETRIES
    is_generator: bool = False

    @property
    def timeout(self) -> timedelta:
        return timedelta(seconds=self.timeout_seconds)


def parse_memory_mib(value: object) -> int:
    """Parse ``"256 MiB"``-style sizes into whole MiB (rounded up), validating the limit."""
    if isinstance(value, bool) or not isinstance(value, str):
        raise ConfigurationError(
            f'memory must be a string with a unit such as "512 MiB" or "4 GiB" (more than 0, at most "64 GiB"), '
            f"got {value!r}.",
            parameter="memory",
        )
    match = _MEMORY_RE.match(value)
    unit = match.group(2).lower() if match else ""
    if match is None or unit not in _UNITS_MIB:
        raise ConfigurationError(
            f"memory={value!r} is not a size Multinode understands: write a number and a unit "
            f'(B, KiB, MiB, GiB, KB, MB, GB), e.g. "512 MiB"; more than 0, at most "64 GiB".',
            parameter="memory",
        )
    mib_float = float(match.group(1)) * _UNITS_MIB[unit]
    mib = int(-(-mib_float // 1))  # round up to a whole MiB
    if mib_float <= 0:
        raise ConfigurationError(f"memory={value!r} must be more than 0.", parameter="memory")
    if mib > MAX_MEMORY_MIB:
        raise ConfigurationError(f'memory={value!r} is over the limit of "64 GiB".', parameter="memory")
    return mib


def _check_int(name: str, value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigurationError(f"{name} must be an integer from {low} to {high}, got {value!r}.", parameter=name)
    if not low <= value <= high:
        raise ConfigurationError(f"{name}={value} is out of range: it must be from {low} to {high}.", parameter=name)
    return value


def build_function_config(
    *,
    cpu: Any = DEFAULT_CPU,
    memory: Any = DEFAULT_MEMORY,
    max_concurrency: Any = DEFAULT_MAX_CONCURRENCY,
    timeout: Any = DEFAULT_TIMEOUT,
    max_retries: Any = DEFAULT_MAX_RETRIES,
    is_generator: bool = False,
) -> FunctionConfig:
    """Validate the user's options; every error names the parameter and its limit."""
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)):
        raise ConfigurationError(
            f"cpu must be a number of virtual CPUs (e.g. 0.5 or 2), more than 0 and at most 16, got {cpu!r}.",
            parameter="cpu",
        )
    if not 0 < cpu <= MAX_CPU:
        raise ConfigurationError(f"cpu={cpu} is out of range: it must be more than 0 and at most 16.", parameter="cpu")
    if not isinstance(timeout, timedelta):
        raise ConfigurationError(
            f"timeout must be a datetime.timedelta (e.g. timedelta(minutes=30)), more than 0 and at most 24 hours, "
            f"got {timeout!r}.",
            parameter="timeout",
        )
    if not timedelta(0) < timeout <= MAX_TIMEOUT:
        raise ConfigurationError(
            f"timeout={timeout} is out of range: it must be more than 0 and at most 24 hours.", parameter="timeout"
        )
    return FunctionConfig(
        cpu=float(cpu),
        memory_mib=parse_memory_mib(memory),
        timeout_seconds=timeout.total_seconds(),
        max_concurrency=_check_int("max_concurrency", max_concurrency, 1, MAX_MAX_CONCURRENCY),
        max_retries=_check_int("max_retries", max_retries, 0, MAX_MAX_RETRIES),
        is_generator=is_generator,
    )


OPTIONS: tuple[str, ...] = tuple(p for p in inspect.signature(build_function_config).parameters if p != "is_generator")
"""The options of ``@mn.function(...)``, as ``build_function_config`` takes them (the decorator's own
keyword parameters must match: ``tests/test_guide_examples.py`` checks it)."""
