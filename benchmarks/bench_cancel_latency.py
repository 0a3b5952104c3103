"""Time from `.cancel()` to `InvocationCancelledError` being raised inside user code (local provisioner).

.venv/bin/python benchmarks/bench_cancel_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _stack import stack_with_project, summary  # noqa: E402

TASKS = """
import time
from pathlib import Path
from multinode import Multinode
from multinode.errors import InvocationCancelledError

mn = Multinode()

@mn.function()
def sleeper(marker, raised_at):
    Path(marker).write_text("running")
    try:
        time.sleep(3600)
    except InvocationCancelledError:
        Path(raised_at).write_text(repr(time.time()))
"""


def wait_for(path: Path, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        if time.monotonic() > deadline:
            raise TimeoutError(path)
        time.sleep(0.002)
    return path.read_text()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with stack_with_project(TASKS) as (env, tmp):
        from multinode import get_deployed_function

        fn = get_deployed_function("bench", "sleeper")
        latencies = []
        for i in range(args.runs):
            marker, raised = tmp / f"m{i}", tmp / f"r{i}"
            invocation_id = fn.start(str(marker), str(raised))
            wait_for(marker)
            time.sleep(0.2)  # let it settle into the sleep
            began = time.time()
            fn.cancel(invocation_id)
            latencies.append(float(wait_for(raised)) - began)
        print(summary(".cancel() -> InvocationCancelledError in user code", latencies))


if __name__ == "__main__":
    main()
