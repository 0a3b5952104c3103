"""200 invocations of a no-op function with max_concurrency=100: wall time and invocations per second,
next to the same count of plain Temporal workflows running one activity on the same server.
`benchmarks/bench.py` prints this with every other figure.

    .venv/bin/python benchmarks/bench_throughput.py [--count 200]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _figures  # noqa: E402
import _plain  # noqa: E402
from _stack import stack_with_project  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--count", type=int, default=200)
    args = parser.parse_args()
    with stack_with_project(_figures.TASKS, _figures.PROJECT) as stack:
        plain = asyncio.run(_plain.throughput(stack.address, args.count))
        mn = asyncio.run(_figures.throughput(args.count))
    n = args.count
    print(f"multinode: {n} no-op invocations (max_concurrency=100): {mn:7.2f} s   {n / mn:8.1f} invocations/s")
    print(f"plain Temporal: {n} workflows + 1 activity each:       {plain:7.2f} s   {n / plain:8.1f} workflows/s")
    print(f"ratio (multinode time / plain time): {mn / plain:.1f}x")


if __name__ == "__main__":
    main()
