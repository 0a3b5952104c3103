"""The control-plane worker's health check (``MULTINODE_WORKER_HEALTH_PORT``; unset: none).

``mn worker`` with the setting serves ``GET http://127.0.0.1:PORT/healthz``: 200 when its event loop
answers within a second and Temporal answered a cheap RPC (GetSystemInfo, every 15 s) within the last
60 s, 503 otherwise. Either way a short JSON body says why, with the load of the executor of blocking
provisioner calls. A deep queue there is reported, not failed on: it is load, and restarting a busy
worker only adds to the work.

The server runs in a thread of its own, so that a stuck event loop gets a 503 that says so rather than
no answer. It listens on loopback only: the check runs inside the worker's container.

``python -m multinode.control_plane.health`` asks it and exits 0 on 200, 1 otherwise (printing the
body): the worker container's ECS health check.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import http.client
import json
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from multinode.errors import ConfigurationError

if TYPE_CHECKING:
    from multinode.activities._blocking import ExecutorLoad

ENV_HEALTH_PORT = "MULTINODE_WORKER_HEALTH_PORT"
HEALTH_PATH = "/healthz"
LOOP_ANSWER_SECONDS = 1.0
"""How long the event loop may take to run a no-op for the worker to count as healthy."""
DEFAULT_TEMPORAL_STALE_SECONDS = 60.0
"""The worker is unhealthy once Temporal has not answered its probe for this long."""
DEFAULT_TEMPORAL_PROBE_SECONDS = 15.0
"""How often the worker probes Temporal (several probes fit in the stale window: one slow answer is
not an outage)."""
TEMPORAL_PROBE_TIMEOUT_SECONDS = 10.0
CHECK_TIMEOUT_SECONDS = 4.0
"""How long ``python -m multinode.control_plane.health`` waits for an answer (under ECS's default
health-check timeout of 5 s)."""


def health_port(environ: Mapping[str, str] | None = None) -> int | None:
    """``MULTINODE_WORKER_HEALTH_PORT``; None when unset (no health check)."""
    env = os.environ if environ is None else environ
    raw = (env.get(ENV_HEALTH_PORT) or "").strip()
    if not raw:
        return None
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigurationError(
            f"{ENV_HEALTH_PORT}={raw!r} is not a TCP port (1-65535): set it to the port the health check asks "
            "on 127.0.0.1, or unset it for no health check."
        )
    return int(raw)


class WorkerHealth:
    """What ``/healthz`` answers: whether the loop runs and Temporal answers, and the executor's load."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        probe: Callable[[], Awaitable[object]],
        load: Callable[[], ExecutorLoad],
        *,
        stale_seconds: float = DEFAULT_TEMPORAL_STALE_SECONDS,
        probe_seconds: float = DEFAULT_TEMPORAL_PROBE_SECONDS,
    ) -> None:
        self._loop = loop
        self._probe = probe
        self._load = load
        self._stale_seconds = stale_seconds
        self._probe_seconds = probe_seconds
        self.temporal_answered_at = time.monotonic()  # the worker has just connected
        self.temporal_error = ""
        self.temporal_answers = 0

    async def probe_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._probe(), TEMPORAL_PROBE_TIMEOUT_SECONDS)
            except Exception as exc:  # noqa: BLE001 - any failure is an unanswered probe
                self.temporal_error = f"{type(exc).__name__}: {exc}"[:300]
            else:
                self.temporal_answered_at = time.monotonic()
                self.temporal_error = ""
                self.temporal_answers += 1
            await asyncio.sleep(self._probe_seconds)

    def check(self) -> tuple[bool, dict[str, Any]]:
        """Whether the worker is healthy, and why (call it from a thread other than the loop's)."""
        problems: list[str] = []
        asked = time.monotonic()
        loop_seconds: float | None = None
        try:
            asyncio.run_coroutine_threadsafe(_nothing(), self._loop).result(timeout=LOOP_ANSWER_SECONDS)
            loop_seconds = round(time.monotonic() - asked, 3)
        except concurrent.futures.TimeoutError:
            problems.append(f"the event loop did not answer within {LOOP_ANSWER_SECONDS:g} s")
        except RuntimeError:
            problems.append("the event loop is closed")
        silent = time.monotonic() - self.temporal_answered_at
        if silent > self._stale_seconds:
            why = f" ({self.temporal_error})" if self.temporal_error else ""
            problems.append(f"Temporal has not answered for {silent:.0f} s{why}")
        body: dict[str, Any] = {
            "healthy": not problems,
            "problems": problems,
            "event_loop_seconds": loop_seconds,
            "temporal_answered_seconds_ago": round(silent, 1),
            "temporal_answers": self.temporal_answers,
            "blocking_calls": self._load().as_dict(),
        }
        return not problems, body


async def _nothing() -> None:
    return None


class HealthServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, health: WorkerHealth) -> None:
        self.health = health
        try:
            super().__init__(("127.0.0.1", port), _Handler)
        except OSError as exc:
            raise ConfigurationError(
                f"Cannot serve the health check on 127.0.0.1:{port} ({exc}): set {ENV_HEALTH_PORT} to a free "
                "port, or unset it."
            ) from exc

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: HealthServer

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.split("?", 1)[0] != HEALTH_PATH:
            self._answer(404, {"error": f"not found: ask GET {HEALTH_PATH}"})
            return
        healthy, body = self.server.health.check()
        self._answer(200 if healthy else 503, body)

    def _answer(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        """Quiet: ECS asks every 30 s."""


@asynccontextmanager
async def serving(
    port: int,
    probe: Callable[[], Awaitable[object]],
    load: Callable[[], ExecutorLoad],
    *,
    stale_seconds: float = DEFAULT_TEMPORAL_STALE_SECONDS,
    probe_seconds: float = DEFAULT_TEMPORAL_PROBE_SECONDS,
) -> AsyncIterator[HealthServer]:
    """Serve ``/healthz`` on 127.0.0.1:``port`` (0: a free port, see ``HealthServer.port``) while the
    block runs; ``probe`` is the cheap Temporal RPC."""
    health = WorkerHealth(
        asyncio.get_running_loop(), probe, load, stale_seconds=stale_seconds, probe_seconds=probe_seconds
    )
    server = HealthServer(port, health)
    thread = threading.Thread(target=server.serve_forever, name="multinode-health", daemon=True)
    thread.start()
    prober = asyncio.create_task(health.probe_forever())
    try:
        yield server
    finally:
        prober.cancel()
        with suppress(asyncio.CancelledError):
            await prober
        await asyncio.get_running_loop().run_in_executor(None, server.shutdown)  # waits up to 0.5 s
        server.server_close()


def check(port: int, timeout: float = CHECK_TIMEOUT_SECONDS) -> tuple[bool, str]:
    """Ask a worker's health check: whether it answered 200, and what it said (or why there was no answer)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)  # no proxy, unlike urllib
    try:
        connection.request("GET", HEALTH_PATH)
        response = connection.getresponse()
        return response.status == 200, response.read().decode(errors="replace")
    except (OSError, http.client.HTTPException) as exc:
        return False, f"no answer from the control-plane worker's health check on 127.0.0.1:{port}: {exc}"
    finally:
        connection.close()


def main(environ: Mapping[str, str] | None = None) -> int:
    try:
        port = health_port(environ)
    except ConfigurationError as exc:
        print(exc, file=sys.stderr)
        return 1
    if port is None:
        print(
            f"{ENV_HEALTH_PORT} is not set: start `mn worker` with it and check with the same value.", file=sys.stderr
        )
        return 1
    healthy, said = check(port)
    print(said, file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
