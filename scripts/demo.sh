#!/usr/bin/env bash
# Installs Multinode, starts the local stack (`mn dev`), registers examples/tasks, runs one invocation
# and prints its result, then stops the stack it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
MN=.venv/bin/mn
export MULTINODE_HOME="${MULTINODE_HOME:-$HOME/.multinode}"
mkdir -p "$MULTINODE_HOME"
LOG="$MULTINODE_HOME/demo-dev.log"
"$MN" dev > "$LOG" 2>&1 &
DEV_PID=$!
trap 'kill -TERM $DEV_PID 2>/dev/null; wait $DEV_PID 2>/dev/null || true' EXIT
echo "== mn dev (log: $LOG)"
for _ in $(seq 1 240); do
  if grep -q "Control-plane worker ready" "$LOG"; then break; fi
  if ! kill -0 $DEV_PID 2>/dev/null; then echo "mn dev stopped:"; cat "$LOG"; exit 1; fi
  sleep 0.5
done
if ! grep -q "Control-plane worker ready" "$LOG"; then echo "mn dev did not get ready in 2 minutes:"; cat "$LOG"; exit 1; fi
cat "$LOG"
echo "== mn register examples/tasks --project demo"
"$MN" register examples/tasks --project demo
echo "== mn invoke slowly_calculate_sum_of_squares 5 --project demo --follow"
"$MN" invoke slowly_calculate_sum_of_squares 5 --project demo --follow
echo "== the same from Python (examples/app.py)"
.venv/bin/python examples/app.py
