"""User code holds no Temporal credential and reaches only what its invocation owns.

Against a Temporal that only answers mutual TLS (the proxy of tests/test_tls.py in front of the dev
server), a function looks for the client key everywhere a process of its own can look (its environment,
its memory, its descriptors, the environments of the container's other processes), then tries to
cancel, signal and terminate another project's running invocation, through the SDK and through the raw
Temporal client its SDK uses. Only its own children may be touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from multinode import InvocationStatus, get_deployed_function
from multinode._runtime.gate import contained
from multinode._settings import MultinodeSettings
from multinode.errors import ConfigurationError
from tests.helpers import assert_eventually, write_tasks
from tests.tls_proxy import SERVER_NAME, TestPKI
from tests.tls_stack import mtls_env

VICTIM = """
import time
from multinode import Multinode

mn = Multinode()

@mn.function()
def sleeper():
    time.sleep(300)
"""

PROBE = r"""
import asyncio
import json
import os
import re
import time

from multinode import Multinode, get_deployed_function
from multinode._client import get_client
from multinode._runtime.gate import contained
from multinode._settings import MultinodeSettings

mn = Multinode()


@mn.function()
def nap():
    time.sleep(300)


def attempt(what, call):
    try:
        call()
    except Exception as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    return "done"


@mn.function()
def probe(project, victim_id, pid_file, go_file):
    report = {}
    report["profile"] = json.loads(os.environ["MULTINODE_TEMPORAL_PROFILE_JSON"])
    report["env"] = dict(os.environ)
    report["temporal_env"] = sorted(k for k in os.environ if k.startswith("TEMPORAL_"))
    fds = [f"/proc/self/fd/{fd}" for fd in os.listdir("/proc/self/fd")]
    report["fds"] = sorted(os.readlink(fd) for fd in fds if os.path.lexists(fd))
    victim = get_deployed_function(project, "sleeper")
    client = asyncio.run(get_client(MultinodeSettings.from_env()))
    handle = client.get_workflow_handle(victim_id)
    report["victim"] = {
        "cancel (SDK)": attempt("cancel", lambda: victim.cancel(victim_id)),
        "get (SDK)": attempt("get", lambda: victim.get(victim_id)),
        "cancel": attempt("cancel", lambda: asyncio.run(handle.cancel())),
        "terminate": attempt("terminate", lambda: asyncio.run(handle.terminate("hostile"))),
        "signal": attempt("signal", lambda: asyncio.run(handle.signal("release", "x"))),
        "describe": attempt("describe", lambda: asyncio.run(handle.describe())),
    }
    # What it owns, it may touch: its own child.
    child = nap.start()
    report["own_child"] = {
        "status": nap.get(child).status.value,
        "cancel": attempt("cancel", lambda: nap.cancel(child)),
        "listed": nap.list().invocation_ids,
    }
    report["own_child"]["listed_is_child"] = report["own_child"]["listed"] in ([], [child])
    report["own_child"]["terminate"] = attempt(
        "terminate", lambda: asyncio.run(client.get_workflow_handle(child).terminate("hostile"))
    )
    report["own_child"]["id"] = child
    # The test reads this process's memory and its ancestors' environments meanwhile.
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(pid_file + ".tmp", pid_file)
    while not os.path.exists(go_file):
        time.sleep(0.05)
    return report
"""


@pytest.mark.timeout(240)
def test_a_function_holds_no_credential_and_touches_only_what_it_owns(
    stack, proxies, pki: TestPKI, project_name: str, tmp_path: Path
) -> None:
    proxy = proxies(require_client_cert=True)
    secure = stack(mtls_env(proxy, pki))
    secure.register(write_tasks(tmp_path / "victim", {"main.py": VICTIM}), f"{project_name}-victim")
    secure.register(write_tasks(tmp_path / "probe", {"main.py": PROBE}), project_name)
    victim = get_deployed_function(f"{project_name}-victim", "sleeper", settings=secure.settings)
    victim_id = victim.start()
    assert_eventually(lambda: victim.get(victim_id).status == InvocationStatus.RUNNING, timeout=60)

    key_lines = [line for line in pki.client_key.read_text().splitlines() if line and not line.startswith("-----")]
    needles = [key_lines[1][:40], str(pki.client_key), str(pki.client_cert), str(pki.directory)]
    probe = get_deployed_function(project_name, "probe", settings=secure.settings)
    pid_file, go_file = tmp_path / "pid", tmp_path / "go"
    invocation_id = probe.start(f"{project_name}-victim", victim_id, str(pid_file), str(go_file))
    user_pid = int(assert_eventually(lambda: pid_file.exists() and pid_file.read_text(), timeout=120))
    in_memory = _search_memory(user_pid, needles)
    ancestors = {_comm(pid): _search_environ(pid, needles) for pid in _container_ancestors(user_pid)}
    reachable = _read_as_same_user(_container_ancestors(user_pid))
    go_file.touch()
    report = probe.await_result(invocation_id, timeout=120)

    # Nothing the function can read holds the credential, or where to find it.
    assert report["profile"] == {"address": proxy.address, "namespace": "default"}
    assert report["temporal_env"] == []
    assert not [k for k, v in report["env"].items() if any(n in v for n in needles)], report["env"]
    assert in_memory == [], "the user process's memory holds the credential or its location"
    assert not [fd for fd in report["fds"] if "credentials" in fd or "pki" in fd], report["fds"]
    assert set(ancestors) == {"mn-agent", "mn-supervisor", "mn-template"}, ancestors
    assert all(hits == [] for hits in ancestors.values()), ancestors
    # A process of the same user without CAP_SYS_PTRACE (user code, unless it runs as root outside a
    # container) can read neither the agent's nor the template's memory or descriptors (the template
    # holds the credentials' memfd).
    assert reachable == {}, reachable

    # It could neither cancel, signal, terminate nor read another project's invocation ...
    for what, outcome in report["victim"].items():
        assert outcome.startswith("refused:") and "PERMISSION_DENIED" in outcome or "may only" in outcome, (
            what,
            outcome,
        )
    state = victim.get(victim_id)
    assert state.status == InvocationStatus.RUNNING and state.error is None
    # ... while its own child it could start, read, list and cancel, but not terminate.
    own = report["own_child"]
    assert own["cancel"] == "done" and own["listed_is_child"], own
    assert own["terminate"].startswith("refused:"), own
    child = get_deployed_function(project_name, "nap", settings=secure.settings).get(own["id"])
    assert child.parent_invocation_id == invocation_id
    assert_eventually(
        lambda: (
            get_deployed_function(project_name, "nap", settings=secure.settings).get(own["id"]).status
            == InvocationStatus.CANCELLED
        ),
        timeout=60,
    )
    victim.cancel(victim_id)
    assert_eventually(lambda: victim.get(victim_id).terminated, timeout=60)


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


def _container_ancestors(pid: int) -> list[int]:
    """The processes above ``pid`` that belong to its container and its template."""
    chain = []
    while True:
        pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        if pid <= 1 or not _comm(pid).startswith("mn-"):
            return chain
        chain.append(pid)


READER = r"""
import json, os, sys
found = {}
for pid in json.loads(sys.argv[1]):
    comm = open(f"/proc/{pid}/comm").read().strip()
    if comm not in ("mn-agent", "mn-template"):
        continue
    for what in ("mem", "fd"):  # (their environments are readable, and hold no credential: checked above)
        try:
            if what == "fd":
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    open(f"/proc/{pid}/fd/{fd}", "rb").read(16)
            else:
                open(f"/proc/{pid}/{what}", "rb").read(16)
        except PermissionError:
            continue
        except OSError:
            continue  # a descriptor that cannot be opened this way (a socket, a pipe end)
        found[f"{comm}/{what}"] = "readable"
print(json.dumps(found))
"""


def _read_as_same_user(pids: list[int]) -> dict[str, str]:
    """What a process of this user, without CAP_SYS_PTRACE, can read of ``pids``' /proc entries."""
    drop = ["setpriv", "--bounding-set", "-sys_ptrace", "--inh-caps", "-all"] if os.geteuid() == 0 else []
    done = subprocess.run(
        [*drop, sys.executable, "-c", READER, json.dumps(pids)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout))


def _search_environ(pid: int, needles: list[str]) -> list[str]:
    environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace")
    return [n for n in needles if n in environ]


def _search_memory(pid: int, needles: list[str]) -> list[str]:
    """Needles found anywhere in the readable memory of ``pid`` (read from outside: the process itself
    never holds them)."""
    found = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/mem", "rb", 0) as mem:
        for line in maps:
            fields = line.split()
            if "r" not in fields[1] or (len(fields) > 5 and fields[5].startswith("[v")):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, ValueError, OverflowError):
                continue
            found.update(n for n in needles if n.encode() in data)
    return sorted(found)


ADD_ONE = """
from multinode import Multinode

mn = Multinode()

@mn.function()
def add_one(x):
    return x + 1
"""


@pytest.mark.timeout(180)
def test_containers_connect_with_a_profile_of_their_own(
    stack, proxies, pki: TestPKI, project_name: str, tmp_path: Path
) -> None:
    control_plane, containers = proxies(require_client_cert=True), proxies(require_client_cert=True)
    config = tmp_path / "temporal.toml"
    config.write_text(
        f"""
[profile.containers]
address = "{containers.address}"

[profile.containers.tls]
server_ca_cert_path = "{pki.ca_cert}"
client_cert_path = "{pki.client_cert}"
client_key_path = "{pki.client_key}"
server_name = "{SERVER_NAME}"
"""
    )
    secure = stack(
        {
            **mtls_env(control_plane, pki),
            "TEMPORAL_CONFIG_FILE": str(config),
            "MULTINODE_CONTAINER_TEMPORAL_PROFILE": "containers",
        }
    )
    assert secure.settings.temporal_address == control_plane.address
    assert secure.settings.container_temporal_profile["address"] == containers.address
    secure.register(write_tasks(tmp_path / "tasks", {"main.py": ADD_ONE}), project_name)
    assert get_deployed_function(project_name, "add_one", settings=secure.settings).call_remote(1) == 2
    # The container's agent connected with the containers' profile, to its address only.
    assert containers.handshakes, "no container connected with the profile of their own"


def test_a_container_profile_must_exist_and_keep_the_namespace(tmp_path: Path) -> None:
    config = tmp_path / "temporal.toml"
    config.write_text('[profile.elsewhere]\naddress = "localhost:7233"\nnamespace = "other"\n')
    env = {"TEMPORAL_CONFIG_FILE": str(config), "MULTINODE_CONTAINER_TEMPORAL_PROFILE": "missing"}
    with pytest.raises(ConfigurationError, match="could not load that profile"):
        MultinodeSettings.from_env(env)
    with pytest.raises(ConfigurationError, match="must use the control plane's namespace 'default'"):
        MultinodeSettings.from_env({**env, "MULTINODE_CONTAINER_TEMPORAL_PROFILE": "elsewhere"})


@pytest.mark.parametrize(
    ("query", "balanced"),
    [
        ("", True),
        ("MultinodeProject = 'a' AND (StartTime < 'x' OR StartTime > 'y')", True),
        ("MultinodeProject = ')'", True),
        ("MultinodeProject = 'it\\'s (' AND x = \"(\"", True),
        ("x = 'a') OR (WorkflowType != ''", False),
        ("x = 'a')", False),
        ("(x = 'a'", False),
        ("x = 'unterminated", False),
        ("WorkflowType='a' /* ( */ ) OR ( WorkflowType='x' /* ) */", False),
        ("WorkflowType='a' -- )", False),
        ("WorkflowType='a'; DELETE", False),
        ("StartTime < '2026-12-05T10:00:00Z' AND MultinodeProject = 'p-1'", True),
    ],
)
def test_a_query_inside_a_function_cannot_reach_outside_its_parentheses(query: str, balanced: bool) -> None:
    assert contained(query) is balanced
