#!/usr/bin/env bash
# Lint, format and type checks (run by scripts/test.sh before the tests, so CI fails on them).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy  # strict, on multinode/ and benchmarks/ (pyproject.toml [tool.mypy])
