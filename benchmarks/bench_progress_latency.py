"""Time from a `yield` in user code to the value being visible through `.get()` (local provisioner).

The function yields a timestamp every 0.7 s; the application polls `.get()` as fast as it can and
records, for each new value, the time it first saw it minus the time it was yielded.
`benchmarks/bench.py` prints this next to its plain-Temporal baseline.

    .venv/bin/python benchmarks/bench_progress_latency.py [--yields 30]
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
    parser.add_argument("--yields", type=int, default=30)
    args = parser.parse_args()
    with stack_with_project(_figures.TASKS, _figures.PROJECT):
        seen = asyncio.run(_figures.progress_latency(args.yields))
    print(f"values seen: {len(seen)} of {args.yields} yields (0.7 s apart)")
    print(summary("yield -> visible through .get()", seen))


if __name__ == "__main__":
    main()
