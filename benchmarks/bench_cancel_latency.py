"""Time from `.cancel()` to `InvocationCancelledError` being raised inside user code (local provisioner).
`benchmarks/bench.py` prints this next to its plain-Temporal baseline.

    .venv/bin/python benchmarks/bench_cancel_latency.py [--runs 20]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _figures  # noqa: E402
from _stack import stack_with_project, summary  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with stack_with_project(_figures.TASKS, _figures.PROJECT) as stack:
        latencies = asyncio.run(_figures.cancel_latency(stack.scratch, args.runs))
    print(summary(".cancel() -> InvocationCancelledError in user code", latencies))


if __name__ == "__main__":
    main()
