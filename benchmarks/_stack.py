"""A throwaway local stack for benchmarks: `mn dev` on free ports with a temporary MULTINODE_HOME."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def local_stack() -> Iterator[dict[str, str]]:
    """Start `mn dev` (embedded server + control-plane worker); yield the environment to reach it."""
    home = Path(tempfile.mkdtemp(prefix="mn-bench-"))
    port = free_port()
    env = {
        **os.environ,
        "MULTINODE_HOME": str(home),
        "TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
        "MULTINODE_TASK_QUEUE": "bench",
    }
    mn = str(Path(sys.executable).parent / "mn")
    log = open(home / "dev.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [mn, "dev", "--port", str(port), "--ui-port", str(free_port())], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while b"Control-plane worker ready" not in (home / "dev.log").read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((home / "dev.log").read_text())
            time.sleep(0.1)
        os.environ.update(env)
        yield env
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


@contextmanager
def stack_with_project(main_py: str, project: str = "bench") -> Iterator[tuple[dict[str, str], Path]]:
    """A local stack with ``main_py`` registered as ``project``; yields its environment and a scratch folder."""
    with local_stack() as env, tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "tasks"
        folder.mkdir()
        (folder / "main.py").write_text(main_py)
        mn = str(Path(sys.executable).parent / "mn")
        subprocess.run([mn, "register", str(folder), "--project", project], env=env, check=True, capture_output=True)
        yield env, Path(tmp)


def summary(label: str, seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return f"{label:<58} median {statistics.median(ms):8.1f} ms   p95 {p95:8.1f} ms   (n={len(ms)})"
