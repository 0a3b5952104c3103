"""Time from `.start` to the first line of user code and to the result, for a no-op function, with
`mn dev` running; next to a plain Temporal workflow running one activity in a warm worker on the same
server in the same run. `benchmarks/bench.py` prints this with every other figure.

    .venv/bin/python benchmarks/bench_start_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _figures  # noqa: E402
import _plain  # noqa: E402
from _stack import stack_with_project, summary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with stack_with_project(_figures.TASKS, _figures.PROJECT) as stack:
        mn = asyncio.run(_figures.start_latency(args.runs))
        plain = asyncio.run(_plain.start_latency(stack.address, args.runs))
    print(summary("multinode: .start -> first line of user code", mn.first_line))
    print(summary("multinode: .start -> result", mn.result))
    print(summary("plain Temporal workflow + 1 activity: start -> activity runs", plain.first_line))
    print(summary("plain Temporal workflow + 1 activity: start -> result", plain.result))


if __name__ == "__main__":
    main()
