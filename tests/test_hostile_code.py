"""Nothing user code raises or does to its own process wedges an invocation: each ends FAILED at once,
with what can be said about it, and its container is gone."""

from __future__ import annotations

import pytest

from multinode import InvocationStatus, get_deployed_function
from multinode._settings import MultinodeSettings
from tests.helpers import assert_eventually

TASKS = r"""
import os
import signal
import time
from datetime import timedelta

from multinode import Multinode

mn = Multinode()
ONE_HOUR = timedelta(hours=1)  # a wedged invocation would sit RUNNING for an hour


class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("boom")


class BadStrAndRepr(Exception):
    def __str__(self):
        raise RuntimeError("boom")

    def __repr__(self):
        raise RuntimeError("boom again")


class NotAStr(Exception):
    def __str__(self):
        return 42


class Unpicklable(Exception):
    def __reduce__(self):
        raise RuntimeError("cannot pickle me")

    def __getstate__(self):
        raise RuntimeError("cannot pickle me")


class BadCause(Exception):
    pass


@mn.function(timeout=ONE_HOUR)
def bad_str():
    raise BadStr("x")


@mn.function(timeout=ONE_HOUR)
def bad_str_and_repr():
    raise BadStrAndRepr("x")


@mn.function(timeout=ONE_HOUR)
def not_a_str():
    raise NotAStr()


@mn.function(timeout=ONE_HOUR)
def unpicklable_error():
    raise Unpicklable("try to pickle me")


@mn.function(timeout=ONE_HOUR)
def broken_cause():
    try:
        raise BadStr("inner")
    except BadStr as exc:
        raise BadCause("outer") from exc


@mn.function(timeout=ONE_HOUR)
def huge_message():
    raise ValueError("x" * 5_000_000)


@mn.function(timeout=ONE_HOUR)
def exits():
    os._exit(3)


@mn.function(timeout=ONE_HOUR)
def segfaults():
    os.kill(os.getpid(), signal.SIGSEGV)


@mn.function(timeout=ONE_HOUR)
def system_exit():
    raise SystemExit(0)


class Stubborn:
    def __getstate__(self):
        raise RuntimeError("my state is mine")


@mn.function(timeout=ONE_HOUR)
def unpicklable_result():
    return Stubborn()


@mn.function(timeout=ONE_HOUR)
def oversized_yield():
    yield "small"
    time.sleep(0.5)  # yields closer together are coalesced: only the latest is pickled and checked
    yield "y" * 300_000
    time.sleep(3600)  # not reached: the yield above raises PayloadError here
"""

EXPECTED = {
    "bad_str": ("BadStr", "str() failed"),
    "bad_str_and_repr": ("BadStrAndRepr", "str() and repr() failed"),
    "not_a_str": ("NotAStr", "NotAStr()"),
    "unpicklable_error": ("Unpicklable", "try to pickle me"),
    "broken_cause": ("BadCause", "outer"),
    "huge_message": ("ValueError", "5,000,000 characters in all"),
    "exits": ("ProcessExitedError", "exited with code 3"),
    "segfaults": ("ProcessExitedError", "killed by signal SIGSEGV"),
    "system_exit": ("SystemExit", ""),
    "unpicklable_result": ("PayloadError", "my state is mine"),
    "oversized_yield": ("PayloadError", "yielded value"),
}


@pytest.mark.timeout(240)
def test_whatever_user_code_raises_or_does_the_invocation_fails_at_once(
    register, settings: MultinodeSettings, project_name: str
) -> None:
    register({"main.py": TASKS})
    started = {
        name: (fn, fn.start())
        for name in EXPECTED
        for fn in [get_deployed_function(project_name, name, settings=settings)]
    }
    for name, (fn, invocation_id) in started.items():
        invocation = assert_eventually(
            lambda: (i := fn.get(invocation_id)).terminated and i,  # noqa: B023 - read at once
            timeout=120,
            message=f"{name} ended",
        )
        error_type, text = EXPECTED[name]
        assert invocation.status == InvocationStatus.FAILED, (name, invocation.status, invocation.error)
        assert invocation.error is not None
        assert invocation.error.type.split(".")[-1] == error_type, (name, invocation.error)
        assert text in invocation.error.message, (name, invocation.error.message[:300])
        assert len(invocation.error.message) < 20_000, name
