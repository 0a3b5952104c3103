"""Time from a `yield` in user code to the value being visible through `.get()` (local provisioner).

The function yields a timestamp every 0.7 s; the application polls `.get()` as fast as it can and
records, for each new value, the time it first saw it minus the time it was yielded.

    .venv/bin/python benchmarks/bench_progress_latency.py [--yields 30]
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
from multinode import Multinode

mn = Multinode()

@mn.function()
def ticker(n):
    for i in range(n):
        yield {"i": i, "at": time.time()}
        time.sleep(0.7)
"""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--yields", type=int, default=30)
    args = parser.parse_args()
    with stack_with_project(TASKS) as (_env, _tmp):
        from multinode import get_deployed_function

        fn = get_deployed_function("bench", "ticker")
        invocation_id = fn.start(args.yields)
        seen: dict[int, float] = {}
        while True:
            invocation = fn.get(invocation_id)
            now = time.time()
            value = invocation.result
            if isinstance(value, dict) and value["i"] not in seen:
                seen[value["i"]] = now - value["at"]
            if invocation.status.is_final:
                break
            time.sleep(0.01)
        print(f"values seen: {len(seen)} of {args.yields} yields (0.7 s apart)")
        print(summary("yield -> visible through .get()", list(seen.values())))


if __name__ == "__main__":
    main()
