"""Chaos: a run of mixed invocations while the control-plane worker, containers' processes and the Temporal
server (persistent, with its database) are killed at random and restarted.

Every invocation must reach the final status its code and config call for, with the right result and
attempt count, and nothing may be left running. The expectations stay exact because a container is
killed only while its code is known to run (each execution writes a marker saying until when it runs)
and the test records every such kill: a killed container fails its attempt (every function has
retries to absorb them), killing the worker or the server fails none.

CI size by default (about 2 minutes on a loaded 2-core machine); ``MULTINODE_TEST_LONG=1`` runs a longer,
heavier round. ``MULTINODE_CHAOS_SEED=N`` replays a seed's choices (timing on a real machine still varies);
``MULTINODE_CHAOS_KINDS=user,agent`` (say) narrows what is killed, to tell which kind causes a failure.
Run with ``-s`` to see the seed and the summary line.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from multinode import InvocationStatus, get_deployed_function
from multinode._handle import DeployedFunction
from multinode._settings import MultinodeSettings
from multinode._types import Invocation
from multinode.control_plane.devserver import DevServer
from multinode.control_plane.registration import register_async
from multinode.errors import AwaitTimeoutError, InvocationError, MultinodeError
from multinode.provisioner.local import LocalProvisioner
from tests.conftest import start_dev_server
from tests.helpers import assert_eventually, wait_for_worker, write_tasks

LONG = bool(os.environ.get("MULTINODE_TEST_LONG"))
INVOCATIONS = 500 if LONG else 70
"""Invocations the test starts (each `nested` one starts one more, a child)."""
START_SECONDS = 300.0 if LONG else 45.0
"""The starts are spread over this long, from the beginning of the chaos."""
CHAOS_SECONDS = 360.0 if LONG else 55.0
"""How long the chaos loop runs."""
DRAIN_SECONDS = 300.0 if LONG else 150.0
"""After the chaos, how long every invocation has to reach its final status."""
KILLS_PER_INVOCATION = 2
"""Most containers of one invocation the chaos kills (every function has MAX_RETRIES for them)."""
MAX_RETRIES = 5
DELIBERATE_FAILURES = 2
"""Attempts of `fails_then_succeeds` that raise before one succeeds."""
SURVIVAL_SECONDS = 10.0
"""How long the processes of a container whose agent or supervisor was killed may take to end."""
CANCEL_ME_SECONDS = 3600
"""How long `cancel_me` would run: the test cancels it long before."""
KILL_MARGIN_SECONDS = 1.0
"""A container is killed only if its code has at least this long still to run (so it is mid-run)."""

TASKS = """
import json
import os
import time
from pathlib import Path

from multinode import Multinode

mn = Multinode()


def running(markers, seconds):
    # Says that this execution's code runs, and until when at least: the test kills containers only then.
    execution = os.environ["MULTINODE_EXECUTION_ID"]
    marker = {"invocation": os.environ["MULTINODE_INVOCATION_ID"], "pid": os.getpid(), "until": time.time() + seconds}
    path = Path(markers) / f"{execution}.json"
    path.with_suffix(".tmp").write_text(json.dumps(marker))
    os.replace(path.with_suffix(".tmp"), path)


@mn.function(max_retries=MAX_RETRIES)
def fast(x, markers):
    running(markers, 0)
    return x * 2


@mn.function(max_retries=MAX_RETRIES)
def slow(x, seconds, markers):
    running(markers, seconds)
    time.sleep(seconds)
    return x * 3


@mn.function(max_retries=MAX_RETRIES)
def fails_then_succeeds(x, counter, markers):
    path = Path(counter)
    count = int(path.read_text()) + 1 if path.exists() else 1
    path.write_text(str(count))
    if count <= DELIBERATE_FAILURES:
        running(markers, 0)
        raise RuntimeError(f"deliberate failure {count}")
    running(markers, 2)
    time.sleep(2)
    return x + 100


@mn.function(max_retries=MAX_RETRIES)
def yields(x, steps, markers):
    running(markers, steps * 0.4)
    for i in range(steps):
        time.sleep(0.4)
        yield x * 10 + i


@mn.function(max_retries=MAX_RETRIES)
def nested(x, markers):
    running(markers, 1.5)
    time.sleep(1.5)
    child = fast.start(x, markers)
    return {"child": child, "value": fast.await_result(child) + 1}


@mn.function(max_retries=MAX_RETRIES)
def cancel_me(markers):
    running(markers, CANCEL_ME_SECONDS)
    time.sleep(CANCEL_ME_SECONDS)
    return "not cancelled"
"""
TASKS = (
    TASKS.replace("MAX_RETRIES", str(MAX_RETRIES))
    .replace("DELIBERATE_FAILURES", str(DELIBERATE_FAILURES))
    .replace("CANCEL_ME_SECONDS", str(CANCEL_ME_SECONDS))
)

MIX = {"fast": 25, "slow": 20, "fails_then_succeeds": 15, "yields": 15, "nested": 10, "cancel_me": 15}
"""Share of each function among the invocations, in percent."""
KINDS = ("user", "agent", "supervisor", "worker", "server")
"""What the chaos kills: a container's user process, its agent or its supervisor; the control-plane
worker; the Temporal server."""
WEIGHTS = {"user": 20, "agent": 20, "supervisor": 20, "worker": 20, "server": 20}
CHAOS_KINDS = [k for k in os.environ.get("MULTINODE_CHAOS_KINDS", ",".join(KINDS)).split(",") if k]
"""The kinds of kill the chaos picks from (all by default; narrow it to tell which one causes a failure)."""


@dataclass
class Planned:
    """One invocation the test starts, and what it must end as."""

    index: int
    function: str
    args: tuple[Any, ...]
    status: InvocationStatus
    result: Any
    deliberate_failures: int = 0
    cancel_delay: float = 0.0
    """cancel_me: seconds after its code started running that the test cancels it."""
    start_at: float = 0.0
    invocation_id: str | None = None
    cancel_requested: bool = False
    killed_attempts: list[int] = field(default_factory=list)


def _plan(rng: random.Random, count: int, markers: Path, counters: Path) -> list[Planned]:
    """The invocations in the order they start (`index` is their position, and their argument `x`)."""
    functions = [name for name, share in MIX.items() for _ in range(share)]
    schedule = sorted((rng.uniform(0, START_SECONDS), rng.choice(functions)) for _ in range(count))
    plan: list[Planned] = []
    m = str(markers)
    for index, (start_at, function) in enumerate(schedule):
        if function == "fast":
            planned = Planned(index, function, (index, m), InvocationStatus.SUCCEEDED, index * 2)
        elif function == "slow":
            seconds = round(rng.uniform(2, 4), 2)
            planned = Planned(index, function, (index, seconds, m), InvocationStatus.SUCCEEDED, index * 3)
        elif function == "fails_then_succeeds":
            counter = str(counters / f"{index}.count")
            planned = Planned(
                index,
                function,
                (index, counter, m),
                InvocationStatus.SUCCEEDED,
                index + 100,
                deliberate_failures=DELIBERATE_FAILURES,
            )
        elif function == "yields":
            steps = rng.randint(3, 8)
            planned = Planned(index, function, (index, steps, m), InvocationStatus.SUCCEEDED, index * 10 + steps - 1)
        elif function == "nested":
            planned = Planned(index, function, (index, m), InvocationStatus.SUCCEEDED, index * 2 + 1)
        else:
            planned = Planned(index, function, (m,), InvocationStatus.CANCELLED, None)
            planned.cancel_delay = rng.uniform(0.5, 3.0)
        planned.start_at = start_at
        plan.append(planned)
    return plan


# --- processes -------------------------------------------------------------------------------------


def _comm(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


def _ticks(pid: int) -> int | None:
    """When the process started (clock ticks after boot): with the pid, it names one process."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return float("inf")


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _parent_comm(pid: int) -> str | None:
    """The name of the process's parent; None if either has ended meanwhile."""
    parent = _parent(pid)
    return None if parent is None else _comm(parent)


def _running(pid: int, ticks: int) -> bool:
    """Whether that process (pid and start time) still runs (a zombie has ended)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return False
    return fields[0] != "Z" and int(fields[19]) == ticks


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _processes_of(home: Path) -> list[str]:
    """Every live process of this test's Multinode home: workers (`mn`), templates, supervisors, agents
    and user processes (`mn-*`), known by their command line (the template's log path, inherited by
    what it forks) or their environment (MULTINODE_HOME)."""
    found = []
    needle, env_needle = str(home).encode(), f"MULTINODE_HOME={home}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        comm = _comm(pid)
        if comm is None or not comm.startswith("mn"):
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            environ = Path(f"/proc/{pid}/environ").read_bytes()
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline or env_needle in environ:
            command = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
            found.append(f"{pid} {comm} ({state}): {command}")
    return found


class Workers:
    """`mn worker` processes, one at a time, each in its own session; their output kept for the report."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.logs.mkdir(parents=True, exist_ok=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0

    def start(self) -> None:
        self.started += 1
        with open(self.logs / f"worker-{self.started}.log", "wb") as log:
            self.process = subprocess.Popen(
                [str(Path(sys.executable).parent / "mn"), "worker"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise


# --- the chaos ---------------------------------------------------------------------------------------


class Chaos:
    """Kills, every 1-3 s, one of: a container process of an execution whose code runs, the worker (then,
    half the time, at once the supervisor of a container it started), the server. Runs on the main thread:
    the dev server is started with PR_SET_PDEATHSIG, which fires when the *thread* that started it ends."""

    def __init__(
        self,
        rng: random.Random,
        server: DevServer,
        workers: Workers,
        home: Path,
        markers: Path,
        by_id: dict[str, Planned],
        lock: threading.Lock,
        rpc_lock: threading.Lock,
    ) -> None:
        self.rng = rng
        self.server = server
        self.workers = workers
        self.home = home
        self.markers = markers
        self.by_id = by_id
        self.lock = lock
        """Guards the plan's kill and cancel records (the starter thread reads them to cancel)."""
        self.rpc_lock = rpc_lock
        """Held by the starter around each `.start`/`.cancel`, and here while the server is away: an
        ambiguous start (did the workflow start before the connection broke?) is not what this tests."""
        self.kills: Counter[str] = Counter()
        self.outages: list[float] = []
        self.idle = 0
        """Container kills given up: no execution's code ran long enough (all between attempts, say)."""
        self.log: list[str] = []
        self.survivors: list[str] = []
        """Containers that did not end whole once their agent or supervisor was killed."""
        self.worker_killed_at = 0.0
        """When the last worker was killed (the containers started before have lost their template)."""

    def run(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            time.sleep(self.rng.uniform(1, 3))
            kind = self.rng.choices(CHAOS_KINDS, [WEIGHTS[k] for k in CHAOS_KINDS])[0]
            if kind == "worker":
                self._kill_worker()
            elif kind == "server":
                self._kill_server()
            else:
                # No execution's code may run just now (all waiting on a restarted worker or server, say):
                # look again for a while.
                for _ in range(25):
                    if self._kill_container_process(kind):
                        break
                    time.sleep(0.3)
                else:
                    self.idle += 1

    def _check_container_ends(self, what: str, processes: list[tuple[int, int | None]]) -> None:
        """A container whose agent or supervisor was killed must end whole, at once: its supervisor, or (if
        the supervisor is what was killed) the template, whose subreaper its orphans become, kills what is
        left. A process re-parented to anything else (init) escaped. (A killed user process leaves the agent
        to report, until the container is deprovisioned.)"""
        deadline = time.monotonic() + SURVIVAL_SECONDS
        while True:
            left = [pid for pid, ticks in processes if ticks is not None and _running(pid, ticks)]
            if not left:
                return
            # A supervisor's parent is its template, or init once the template has ended: that is no escape.
            parents = {pid: _parent_comm(pid) for pid in left if _comm(pid) in ("mn-agent", "mn-user")}
            escaped = {pid: name for pid, name in parents.items() if name is not None and not name.startswith("mn-")}
            if escaped or time.monotonic() > deadline:
                how = f"re-parented to {sorted(set(escaped.values()))}" if escaped else "still running"
                self.survivors.append(f"{what}: {', '.join(f'{_comm(pid)} {pid}' for pid in left)} {how}")
                return
            time.sleep(0.05)

    def _kill_worker(self) -> None:
        self.workers.kill()
        self.worker_killed_at = time.time()
        self.log.append(f"{time.strftime('%X')} worker killed")
        if "supervisor" in CHAOS_KINDS and self.rng.random() < 0.5:
            # At once, while the containers the dead worker started still run: their template is gone.
            self._kill_container_process("supervisor", older_only=True)
        time.sleep(self.rng.uniform(0, 2))
        self.workers.start()
        self.kills["worker"] += 1
        self.log.append(f"{time.strftime('%X')} worker #{self.workers.started} started")

    def _kill_server(self) -> None:
        with self.rpc_lock:
            began = time.monotonic()
            assert self.server.process is not None
            self.server.process.send_signal(signal.SIGKILL)
            self.server.process.wait()
            self.kills["server"] += 1
            time.sleep(self.rng.uniform(1, 5))
            for attempt in range(5):
                try:
                    self.server.start()
                    break
                except MultinodeError:
                    if attempt == 4:
                        raise
                    time.sleep(1)
            self.outages.append(time.monotonic() - began)
            self.log.append(f"{time.strftime('%X')} server killed, back after {self.outages[-1]:.1f} s")

    def _kill_container_process(self, kind: str, *, older_only: bool = False) -> bool:
        """Kill the user process, agent or supervisor of an execution whose code runs (its marker says
        so, with KILL_MARGIN_SECONDS to spare), of an invocation not being cancelled and not yet killed
        KILLS_PER_INVOCATION times: that attempt must fail."""
        now = time.time()
        candidates = []
        for path in self.markers.glob("*.json"):
            marker = _read_json(path)
            if marker is None or marker["until"] - now < KILL_MARGIN_SECONDS:
                continue
            execution = path.stem
            planned = self.by_id.get(marker["invocation"])
            if planned is None:
                continue  # a nested invocation's child (never long enough to be a candidate anyway)
            attempt = int(execution.rsplit("-", 1)[1])
            if attempt in planned.killed_attempts or len(planned.killed_attempts) >= KILLS_PER_INVOCATION:
                continue
            candidates.append((execution, planned, attempt, marker))
        if not candidates:
            return False
        candidates.sort(key=lambda c: c[0])
        # A supervisor: favour containers started before the last worker kill. Their template has ended with
        # that worker, so what their supervisor leaves behind has no subreaper of Multinode's to kill it.
        state_files = {c[0]: self.home / "containers" / c[0] / "state.json" for c in candidates}
        older = [c for c in candidates if _mtime(state_files[c[0]]) < self.worker_killed_at]
        if older_only or (kind == "supervisor" and older and self.rng.random() < 0.7):
            candidates = older
        if not candidates:
            return False
        execution, planned, attempt, marker = self.rng.choice(candidates)
        state = _read_json(self.home / "containers" / execution / "state.json")
        if state is None:
            return False
        if kind == "user":
            pid = int(marker["pid"])
        elif kind == "agent":
            try:
                pid = int((self.home / "containers" / execution / "child.pid").read_text())
            except (OSError, ValueError):
                return False
        else:
            pid = int(state["pid"])
        if _comm(pid) != f"mn-{kind}":
            return False  # ended meanwhile
        container = [int(state["pid"]), int(marker["pid"])]
        try:
            container.append(int((self.home / "containers" / execution / "child.pid").read_text()))
        except (OSError, ValueError):
            pass
        others = [(other, _ticks(other)) for other in container if other != pid]
        with self.lock:
            if planned.cancel_requested or time.time() > marker["until"] - KILL_MARGIN_SECONDS / 2:
                return False
            os.kill(pid, signal.SIGKILL)
            planned.killed_attempts.append(attempt)
        self.kills[kind] += 1
        orphaned = _mtime(state_files[execution]) < self.worker_killed_at
        self.log.append(
            f"{time.strftime('%X')} {kind} {pid} of {execution} ({planned.function}) killed"
            + (" (its template ended with a killed worker)" if orphaned else "")
        )
        if kind != "user":
            self._check_container_ends(f"{kind} {pid} of {execution} killed", others)
        return True


class Starter(threading.Thread):
    """Starts the planned invocations on schedule, and cancels each `cancel_me` once its code runs."""

    def __init__(
        self,
        plan: list[Planned],
        fns: dict[str, DeployedFunction],
        markers: Path,
        by_id: dict[str, Planned],
        lock: threading.Lock,
        rpc_lock: threading.Lock,
        deadline: float,
    ) -> None:
        super().__init__(daemon=True)
        self.plan = plan
        self.fns = fns
        self.markers = markers
        self.by_id = by_id
        self.lock = lock
        self.rpc_lock = rpc_lock
        self.deadline = deadline
        self.error: BaseException | None = None
        self.halt = threading.Event()
        """Set when the test ends early (it failed): start and cancel nothing more."""

    def run(self) -> None:
        try:
            began = time.monotonic()
            for planned in self.plan:
                while time.monotonic() - began < planned.start_at:
                    self._cancel_due()
                    time.sleep(0.1)
                if self.halt.is_set():
                    return
                with self.rpc_lock:
                    invocation_id = self.fns[planned.function].start(*planned.args)
                with self.lock:
                    planned.invocation_id = invocation_id
                    self.by_id[invocation_id] = planned
            while any(p.function == "cancel_me" and not p.cancel_requested for p in self.plan):
                if self.halt.is_set():
                    return
                if time.monotonic() > self.deadline:
                    raise AssertionError("some cancel_me invocations never ran: they could not be cancelled")
                self._cancel_due()
                time.sleep(0.1)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc

    def _cancel_due(self) -> None:
        """Cancel a `cancel_me` whose latest attempt's code has run for its cancel delay and was not killed
        (a kill then a cancel in quick succession could count that attempt either way)."""
        now = time.time()
        for planned in self.plan:
            if planned.function != "cancel_me" or planned.invocation_id is None or planned.cancel_requested:
                continue
            attempts = [int(p.stem.rsplit("-", 1)[1]) for p in self.markers.glob(f"{planned.invocation_id}-*.json")]
            if not attempts:
                continue
            latest = max(attempts)
            marker = _read_json(self.markers / f"{planned.invocation_id}-{latest}.json")
            if marker is None or now - (marker["until"] - CANCEL_ME_SECONDS) < planned.cancel_delay:
                continue
            with self.lock:
                if latest in planned.killed_attempts:
                    continue
                planned.cancel_requested = True
            with self.rpc_lock:
                self.fns["cancel_me"].cancel(planned.invocation_id)


# --- checks --------------------------------------------------------------------------------------------


def _final(fn: DeployedFunction, invocation_id: str, deadline: float) -> Invocation | None:
    """The invocation once it has ended and its containers are gone; None past the deadline."""
    while time.monotonic() < deadline:
        try:
            try:
                fn.await_result(invocation_id, timeout=max(1.0, deadline - time.monotonic()))
            except InvocationError:
                pass  # ended otherwise than by success: checked below
            invocation = fn.get(invocation_id)
            if invocation.status.is_final and invocation.terminated:
                return invocation
            time.sleep(0.5)
        except AwaitTimeoutError:
            continue
        except MultinodeError:  # TemporalUnreachableError while the server restarts, say
            time.sleep(1)
    return None


def _mismatches(planned: Planned, invocation: Invocation | None) -> tuple[list[str], list[str]]:
    """What is wrong with how the invocation ended, given its code, config and the kills it took: its
    outcome (not final, status, result: a lost invocation), then its attempts."""
    if invocation is None:
        return ["not final"], []
    outcome, attempts = [], []
    if invocation.status != planned.status:
        outcome.append(f"status {invocation.status}, expected {planned.status}")
    if planned.status == InvocationStatus.SUCCEEDED:
        result = invocation.result["value"] if planned.function == "nested" else invocation.result
        if result != planned.result:
            outcome.append(f"result {invocation.result!r}, expected {planned.result!r}")
    if not invocation.terminated or not all(e.terminated for e in invocation.executions):
        outcome.append("not terminated")
    expected_failed = planned.deliberate_failures + len(planned.killed_attempts)
    if invocation.num_failed_attempts != expected_failed:
        attempts.append(f"{invocation.num_failed_attempts} failed attempts, expected {expected_failed}")
    failed = sorted(e.attempt for e in invocation.executions if e.status == InvocationStatus.FAILED)
    expected_attempts = sorted(list(range(1, planned.deliberate_failures + 1)) + planned.killed_attempts)
    if failed != expected_attempts:
        attempts.append(f"failed attempts {failed}, expected {expected_attempts} (killed: {planned.killed_attempts})")
    if len(invocation.executions) != expected_failed + 1:
        attempts.append(f"{len(invocation.executions)} executions, expected {expected_failed + 1}")
    elif invocation.executions[-1].status != planned.status:
        attempts.append(f"last execution {invocation.executions[-1].status}, expected {planned.status}")
    return outcome, attempts


def _describe(invocation: Invocation | None) -> str:
    if invocation is None:
        return "(no final state)"
    lines = [f"{invocation.status} failed={invocation.num_failed_attempts} error={invocation.error}"]
    for e in invocation.executions:
        lines.append(f"    {e.execution_id}: {e.status} {e.started_at} -> {e.finished_at} error={e.error}")
        if e.error is not None and e.error.traceback:  # the user code's frames, and where it ended
            frames = e.error.traceback.strip().splitlines()
            user = [f"{f.strip()}: {frames[i + 1].strip()}" for i, f in enumerate(frames[:-1]) if "main.py" in f]
            lines.extend(f"      | {line}" for line in [*user, frames[-1]])
    return "\n".join(lines)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(none)"


@pytest.fixture
def persistent_server(tmp_path: Path) -> Iterator[DevServer]:
    server = start_dev_server(ui=False, db_file=tmp_path / "temporal.db", log_file=tmp_path / "server.log")
    yield server
    server.stop()


@pytest.mark.timeout(1800 if LONG else 600)
def test_chaos(
    persistent_server: DevServer, settings: MultinodeSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed = int(os.environ.get("MULTINODE_CHAOS_SEED") or random.randrange(1 << 30))
    print(f"\nchaos seed {seed} (MULTINODE_CHAOS_SEED={seed} replays its choices)")
    rng = random.Random(seed)
    monkeypatch.setenv("TEMPORAL_ADDRESS", persistent_server.address)
    own = MultinodeSettings.from_env()
    home = own.home
    markers, counters = tmp_path / "markers", tmp_path / "counters"
    markers.mkdir()
    counters.mkdir()
    workers = Workers(os.environ.copy(), tmp_path / "workers")
    workers.start()
    began = time.monotonic()
    lock, rpc_lock = threading.Lock(), threading.Lock()
    by_id: dict[str, Planned] = {}
    plan = _plan(rng, INVOCATIONS, markers, counters)
    chaos = Chaos(rng, persistent_server, workers, home, markers, by_id, lock, rpc_lock)
    outcomes: dict[int, Invocation | None] = {}
    children: dict[str, tuple[Planned, Invocation | None]] = {}
    extra_fast: set[str] = set()
    containers_left: list[str] = []
    orphans: list[str] = []
    chaos_seconds = 0.0
    starter: Starter | None = None
    try:
        wait_for_worker(own)
        project = f"chaos-{uuid.uuid4().hex[:6]}"
        asyncio.run(register_async(write_tasks(tmp_path / "tasks", {"main.py": TASKS}), project, own))
        fns = {name: get_deployed_function(project, name, settings=own) for name in MIX}
        starter = Starter(plan, fns, markers, by_id, lock, rpc_lock, time.monotonic() + CHAOS_SECONDS + DRAIN_SECONDS)
        chaos_began = time.monotonic()
        starter.start()
        chaos.run(CHAOS_SECONDS)
        chaos_seconds = time.monotonic() - chaos_began
        starter.join(timeout=DRAIN_SECONDS)
        assert starter.error is None and not starter.is_alive(), f"starter: {starter.error!r}"

        deadline = time.monotonic() + DRAIN_SECONDS
        outcomes = {p.index: _final(fns[p.function], p.invocation_id, deadline) for p in plan if p.invocation_id}
        # The children of `nested`: one per parent (kills never hit a parent after its child started),
        # each SUCCEEDED; and no other invocation of `fast` exists.
        for p in plan:
            outcome = outcomes[p.index]
            if p.function == "nested" and outcome is not None and isinstance(outcome.result, dict):
                child = outcome.result["child"]
                children[child] = (p, _final(fns["fast"], child, deadline))
        extra_fast = _list_all(fns["fast"]) - {p.invocation_id for p in plan if p.function == "fast"} - set(children)
        try:
            assert_eventually(lambda: LocalProvisioner(home).running_handles() == [], timeout=60)
        except AssertionError:
            containers_left = LocalProvisioner(home).running_handles()
    finally:
        if starter is not None:
            starter.halt.set()
        workers.stop()
        # With the last worker stopped, its templates (and their unassigned containers) end too.
        try:
            assert_eventually(lambda: not _processes_of(home), timeout=30)
        except AssertionError:
            orphans = _processes_of(home)
        for handle in LocalProvisioner(home).running_handles():
            LocalProvisioner(home).stop(handle)  # clean-up after a failure; none is left when the test passes

    checked = {p.index: _mismatches(p, outcomes.get(p.index)) for p in plan}
    wrong = {i: outcome + attempts for i, (outcome, attempts) in checked.items() if outcome or attempts}
    lost = [i for i, (outcome, _) in checked.items() if outcome]
    child_wrong = [
        f"child {cid} of {parent.invocation_id}: {_describe(c)}"
        for cid, (parent, c) in children.items()
        if c is None
        or (c.status, c.result, c.num_failed_attempts, c.parent_invocation_id, c.terminated)
        != (InvocationStatus.SUCCEEDED, parent.index * 2, 0, parent.invocation_id, True)
    ]
    kills = ", ".join(f"{kind} {chaos.kills[kind]}" for kind in KINDS)
    outages = ", ".join(f"{s:.1f}" for s in chaos.outages) or "-"
    print(
        f"chaos seed={seed}: invocations {len(plan)} (+{len(children)} nested children); kills: {kills} "
        f"(container kills given up: {chaos.idle}); server outages (s): {outages}; workers started "
        f"{workers.started}; chaos {chaos_seconds:.0f} s, total {time.monotonic() - began:.0f} s; "
        f"lost {len(lost) + len(child_wrong)}; attempt counts wrong {len(wrong) - len(lost)}; "
        f"containers surviving a kill {len(chaos.survivors)}; orphans {len(orphans) + len(containers_left)}"
    )
    (tmp_path / "chaos.log").write_text("\n".join(chaos.log) + "\n")
    report = [f"seed {seed}; chaos log:", *chaos.log]
    if chaos.survivors:
        report += ["containers that did not end with their agent or supervisor:", *chaos.survivors]
    for index, what in wrong.items():
        p = plan[index]
        report.append(
            f"{p.function}{p.args[:-1]} {p.invocation_id} killed={p.killed_attempts}: {'; '.join(what)}\n"
            f"  {_describe(outcomes.get(index))}"
        )
        for attempt in range(1, MAX_RETRIES + 2):
            log = home / "containers" / f"{p.invocation_id}-{attempt}" / "output.log"
            if log.exists():
                report.append(f"  output of attempt {attempt}:\n{_tail(log)}")
    if wrong or child_wrong:
        for log in sorted((tmp_path / "workers").glob("*.log")):
            report.append(f"{log.name}:\n{_tail(log, 30)}")
    assert not wrong, "\n".join(report)
    assert not child_wrong, "\n".join([*child_wrong, *report])
    assert len(children) == sum(p.function == "nested" for p in plan)
    assert not extra_fast, f"unexpected invocations of fast (a nested parent started twice?): {extra_fast}"
    assert not chaos.survivors, "containers that survived the kill of their agent or supervisor:\n" + "\n".join(
        chaos.survivors
    )
    assert not containers_left, f"containers left running: {containers_left}"
    assert not orphans, "processes left:\n" + "\n".join(orphans)


def _list_all(fn: DeployedFunction) -> set[str]:
    """Every invocation id of the function (visibility is eventually consistent: read it at the end)."""
    found: set[str] = set()
    offset = None
    while True:
        page = fn.list(offset)
        found.update(page.invocation_ids)
        if page.offset is None:
            return found
        offset = page.offset
