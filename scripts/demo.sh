#!/usr/bin/env bash
# Installs Multinode, starts the local stack (`mn dev`), registers examples/tasks, runs one invocation
# and prints its result, then stops the stack it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
MN=.venv/bin/mn
export MULTINODE_HOME="${MULTINODE_HOME:-$HOME/.multinode}"
mkdir -p "$MULTINODE_HOME"
"$MN" dev > "$MULTINODE_HOME/demo-dev.log" 2>&1 &
DEV_PID=$!
trap 'kill -TERM $DEV_PID 2>/dev/null; wait $DEV_PID 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
  if "$MN" projects >/dev/null 2>&1 && grep -q "Control-plane worker" "$MULTINODE_HOME/demo-dev.log"; then break; fi
  sleep 0.5
done
echo "== mn register examples/tasks --project demo"
"$MN" register examples/tasks --project demo
echo "== mn invoke slowly_calculate_sum_of_squares 5 --project demo --follow"
"$MN" invoke slowly_calculate_sum_of_squares 5 --project demo --follow
echo "== the same from Python"
.venv/bin/python examples/app.py
