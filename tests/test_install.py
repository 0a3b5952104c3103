"""A plain ``pip install`` (no extras) into a fresh venv gives a working ``mn``: every module the package
imports is declared, not pulled in by the test extras by chance."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Build from a copy: pip builds a local folder in place (its build/ would go into the work tree), and
# caches, venvs and egg-info there are not part of the package.
NOT_PACKAGE = shutil.ignore_patterns(
    ".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", "node_modules"
)


def run(*cmd: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.timeout(600)
def test_pip_install_without_extras_gives_a_working_mn(tmp_path: Path) -> None:
    source = tmp_path / "source"
    shutil.copytree(ROOT, source, ignore=NOT_PACKAGE)
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    bin_dir = venv / "bin"
    run(bin_dir / "python", "-m", "pip", "install", "--quiet", source, timeout=540)

    assert "Usage: mn" in run(bin_dir / "mn", "--help").stdout
    assert "--ui-port" in run(bin_dir / "mn", "dev", "--help").stdout
    run(bin_dir / "python", "-c", "import multinode, multinode.cli")
    # A usage error goes through the CLI's error boundary, which must not need anything undeclared.
    done = subprocess.run([bin_dir / "mn", "get"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Missing argument" in done.stderr, done.stderr
