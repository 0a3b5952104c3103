"""Applications that used the SDK exit cleanly, however many calls they made.

Temporal's native client completes RPCs on its own threads; one that touches the interpreter while it
finalizes aborts the process (SIGABRT) or segfaults after the program's work is done. Each run is a
fresh process; the crash was seen in about one run in seven, so several runs of each kind are made.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from multinode import get_deployed_function

TASKS = """
from multinode import Multinode

mn = Multinode()

@mn.function()
def double(x):
    return 2 * x
"""

APP = """
import asyncio, sys
from multinode import get_deployed_function

fn = get_deployed_function(sys.argv[1], "double")
ids = sys.argv[3:]


async def main() -> int:
    total = 0
    for _ in range(50):
        results = await asyncio.gather(*(fn.await_result_async(i) for i in ids))
        states = await asyncio.gather(*(fn.get_async(i) for i in ids))
        total += sum(results) + len(states)
    await fn.list_async()
    return total


if sys.argv[2] == "async":
    total = asyncio.run(main())
else:
    total = 0
    for _ in range(50):
        total += sum(fn.await_result(i) for i in ids) + len([fn.get(i) for i in ids])
    fn.list()
print("total", total)
"""

RUNS = 6


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["async", "sync"])
def test_an_application_exits_cleanly_after_many_calls(register, project_name: str, tmp_path: Path, mode: str) -> None:
    register({"main.py": TASKS})
    fn = get_deployed_function(project_name, "double")
    ids = [fn.start(i) for i in range(3)]
    expected = 50 * (sum(2 * i for i in range(3)) + 3)
    assert [fn.await_result(i, timeout=60) for i in ids] == [0, 2, 4]
    app = tmp_path / "app.py"
    app.write_text(APP)
    for run in range(RUNS):  # 300 calls per run (each .get is two RPCs, each await one or two)
        done = subprocess.run(
            [sys.executable, str(app), project_name, mode, *ids], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"run {run}: exit {done.returncode}\n{done.stderr[-2000:]}"
        assert done.stdout.split() == ["total", str(expected)]
        assert "Fatal Python error" not in done.stderr
