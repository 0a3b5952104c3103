#!/usr/bin/env bash
# Creates .venv (if missing) and installs Multinode with its test tools. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test]'
# tests/test_web_ui.py drives Debian's chromium through playwright (it is skipped without it).
if ! command -v chromium >/dev/null && command -v apt-get >/dev/null; then
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  APT="$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -y -qq"
  if ! { $APT install chromium || { $APT update && $APT install chromium; }; } >/dev/null; then
    echo "note: could not install chromium (apt-get install chromium); tests/test_web_ui.py will be skipped" >&2
  fi
fi
