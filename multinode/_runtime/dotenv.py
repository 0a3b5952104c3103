"""A fargate version's ``.env``, delivered at run time instead of baked into its image.

Anyone allowed to pull the image could read a file in it, so the image holds no ``.env``: registration
records the text with the version in the project's registry (encrypted there with
``MULTINODE_ENCRYPTION_KEYS``; in plain text without keys, as every payload then is, and registration
warns), and the container's agent, which holds the Temporal connection, reads it
with the registry's ``VERSION_ENV_QUERY`` once it has connected. The user process (started before
that, from the image's entry point) asks its agent for it with an ``env`` frame and loads it before it
imports ``main.py``. The text never passes through RunTask overrides, logs or the version's record; the
gate refuses user code the query (and the registry's history), so a function reads no other version's.

Local containers are not concerned: they load the stored folder's own ``.env`` (``loader.py``).
"""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from multinode._protocol import ENV_PROJECT, ENV_VERSION, VERSION_ENV_QUERY, project_workflow_id

DOTENV_WAIT_SECONDS = 120.0
"""How long an agent keeps asking the registry for its version's ``.env`` while no answer comes (Temporal
or the control-plane worker away for a moment) before the execution fails."""
DOTENV_QUERY_TIMEOUT_SECONDS = 10.0
"""Longest one ask may take (a query waits for a control-plane worker to answer it)."""
_TRANSIENT = frozenset({RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED, RPCStatusCode.RESOURCE_EXHAUSTED})


async def fetch_dotenv(client: Client, project: str, version: str) -> str:
    """The ``.env`` text the registry holds for ``version`` of ``project`` ('' for none)."""
    handle = client.get_workflow_handle(project_workflow_id(project))
    deadline = time.monotonic() + DOTENV_WAIT_SECONDS
    pause = 0.5
    while True:
        try:
            text = await handle.query(
                VERSION_ENV_QUERY,
                version,
                result_type=str,
                rpc_timeout=timedelta(seconds=DOTENV_QUERY_TIMEOUT_SECONDS),
            )
            return str(text)
        except RPCError as exc:
            if exc.status not in _TRANSIENT or time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, 5.0)


class DotenvRelay:
    """The agent's side: answers the user process's request for its version's ``.env`` once connected
    (the request usually comes first: the user process starts before the agent connects)."""

    def __init__(self, send: Callable[[dict[str, Any], bytes], None]) -> None:
        self._send = send
        self._lock = threading.Lock()
        self._requested = False
        self._answering = False
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def requested(self) -> None:
        """The user process asked (on the agent's reader thread)."""
        with self._lock:
            self._requested = True
            start = self._start_locked()
        if start is not None:
            start()

    def connected(self, client: Client) -> None:
        """The agent has connected (on its event loop)."""
        with self._lock:
            self._client, self._loop = client, asyncio.get_running_loop()
            start = self._start_locked()
        if start is not None:
            start()

    def _start_locked(self) -> Callable[[], Any] | None:
        # Answered once: the user's code runs after the answer, and a second ask would only be its own.
        if not self._requested or self._answering or self._client is None or self._loop is None:
            return None
        self._answering = True
        client, loop = self._client, self._loop
        return lambda: asyncio.run_coroutine_threadsafe(self._answer(client), loop)

    async def _answer(self, client: Client) -> None:
        project, version = os.environ.get(ENV_PROJECT), os.environ.get(ENV_VERSION)
        if not project or not version:
            self._send({"op": "env", "error": f"the container has no {ENV_PROJECT} or {ENV_VERSION}"}, b"")
            return
        try:
            text = await fetch_dotenv(client, project, version)
        except Exception as exc:  # noqa: BLE001 - the user process reports it as the execution's error
            why = f"{type(exc).__name__}: {exc}"
            print(f"[multinode] reading the version's .env from the registry failed: {why}", file=sys.stderr)
            self._send({"op": "env", "error": why}, b"")
            return
        self._send({"op": "env"}, text.encode())
