"""Stored versions for the local backend: content-addressed code and cached Python environments.

``$MULTINODE_HOME/code/DIGEST/`` holds a copy of the tasks folder (its ``.env`` included: the values
stay on this disk and never pass through Temporal). ``$MULTINODE_HOME/envs/KEY/`` is a virtual
environment built with uv from requirements.txt plus Multinode's runtime; KEY hashes the
requirements, the Python version and the runtime pins, so unchanged requirements never reinstall.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import multinode
from multinode.errors import InvalidTasksFolderError, MultinodeError, ProvisionerError

IGNORED_NAMES = frozenset(
    {"__pycache__", ".git", ".hg", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
"""Folder entries left out of a stored version."""
RUNTIME_DISTRIBUTIONS = ("temporalio", "jsonpickle", "pydantic", "python-dotenv")
"""What the container runtime imports, pinned to the control plane's versions."""
ENV_BUILD_TIMEOUT_SECONDS = 1800
"""Longest an environment build may take."""
SUMMARY_MAX_CHARS = 400
"""A one-line error summary is cut here; the full text goes to the registration log."""


@dataclass(frozen=True)
class BuiltVersion:
    code_digest: str
    artifact: dict[str, str]
    code_dir: Path
    python: Path


def _ignored(name: str) -> bool:
    return name in IGNORED_NAMES or name.endswith(".pyc")


def tasks_files(tasks_dir: Path) -> list[Path]:
    """The files of a tasks folder that make up a version, sorted."""
    files: list[Path] = []
    for root, dirs, names in os.walk(tasks_dir, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not _ignored(d))
        files.extend(Path(root, n) for n in sorted(names) if not _ignored(n))
    return files


def code_digest(tasks_dir: Path) -> str:
    digest = hashlib.sha256()
    for path in tasks_files(tasks_dir):
        digest.update(path.relative_to(tasks_dir).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def runtime_pins() -> list[str]:
    return [f"{name}=={metadata.version(name)}" for name in RUNTIME_DISTRIBUTIONS]


class LocalVersionStore:
    def __init__(self, home: Path) -> None:
        self.home = home

    def code_dir(self, digest: str) -> Path:
        return self.home / "code" / digest

    def env_dir(self, key: str) -> Path:
        return self.home / "envs" / key

    def env_python(self, key: str) -> Path:
        return self.env_dir(key) / "bin" / "python"

    def build(self, tasks_dir: Path, *, shown_as: Path | None = None) -> BuiltVersion:
        """Store ``tasks_dir`` and its environment; errors name it as ``shown_as`` (as the user typed it)."""
        digest = code_digest(tasks_dir)
        code_dir = self._store_code(tasks_dir, digest)
        requirements = tasks_dir / "requirements.txt"
        req_bytes = requirements.read_bytes() if requirements.is_file() else b""
        key = hashlib.sha256(
            b"\0".join([sys.version.encode(), "\n".join(runtime_pins()).encode(), req_bytes])
        ).hexdigest()[:24]
        try:
            self._build_env(key, code_dir / "requirements.txt" if req_bytes else None)
        except _InstallFailed as failed:
            raise _install_error(failed.output, code_dir, shown_as or tasks_dir, req_bytes) from None
        return BuiltVersion(
            code_digest=digest,
            artifact={"code_digest": digest, "env_key": key},
            code_dir=code_dir,
            python=self.env_python(key),
        )

    def link_runtime(self) -> Path:
        """``$MULTINODE_HOME/runtime`` holds only a link to this ``multinode`` package, so a version's
        environment imports Multinode without seeing the control plane's other packages."""
        target = Path(multinode.__file__).resolve().parent
        # One folder per Multinode install: an environment keeps the runtime it was built with, and two
        # installs sharing a home do not re-point each other's link.
        install = hashlib.sha256(f"{target}\n{runtime_pins()}".encode()).hexdigest()[:12]
        runtime = self.home / "runtime" / install
        runtime.mkdir(parents=True, exist_ok=True)
        link = runtime / "multinode"
        if not (link.is_symlink() and Path(os.readlink(link)) == target):
            tmp = runtime / f".multinode-{os.getpid()}"
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(target, target_is_directory=True)
            os.replace(tmp, link)
        return runtime

    def _store_code(self, tasks_dir: Path, digest: str) -> Path:
        final = self.code_dir(digest)
        if final.is_dir():
            return final
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{digest[:12]}-", dir=final.parent))
        shutil.copytree(tasks_dir, tmp, ignore=lambda _d, names: [n for n in names if _ignored(n)], dirs_exist_ok=True)
        try:
            os.replace(tmp, final)
        except OSError:  # another registration stored the same content first
            shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _build_env(self, key: str, requirements: Path | None) -> None:
        env_dir = self.env_dir(key)
        ready = env_dir / ".multinode-ready"
        if ready.exists():
            return
        env_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(env_dir.parent / f"{key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if ready.exists():
                return
            shutil.rmtree(env_dir, ignore_errors=True)  # a build that was interrupted
            uv = _uv()
            env = {**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": str(env_dir)}
            created = _run([uv, "venv", "--quiet", "--python", sys.executable, str(env_dir)], env)
            if created.returncode != 0:
                raise ProvisionerError(
                    f"Creating the environment {env_dir} failed: {summarize_uv_error(created.stderr)}"
                )
            install = [uv, "pip", "install", "--quiet", "--python", str(env_dir / "bin" / "python"), *runtime_pins()]
            if requirements is not None:
                install += ["-r", str(requirements)]
            installed = _run(install, env)
            if installed.returncode != 0:
                raise _InstallFailed((installed.stderr or installed.stdout).strip())
            purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
            (purelib / "_multinode_runtime.pth").write_text(str(self.link_runtime()) + "\n")
            ready.touch()


def _uv() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise ProvisionerError("uv is not installed; install Multinode with its dependencies.") from None
        return found


def _run(command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command, env=env, capture_output=True, text=True, timeout=ENV_BUILD_TIMEOUT_SECONDS, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise ProvisionerError(
            f"Building an environment with uv took longer than {ENV_BUILD_TIMEOUT_SECONDS} s."
        ) from exc


class _InstallFailed(Exception):
    """uv could not install the runtime and requirements.txt; ``output`` is what it printed."""

    def __init__(self, output: str) -> None:
        super().__init__(output)
        self.output = output


def _install_error(output: str, code_dir: Path, shown_as: Path, requirements: bytes) -> MultinodeError:
    output = shown_paths(output, code_dir, shown_as)
    if not requirements:  # only Multinode's own pins were installed: not the user's to fix
        return ProvisionerError(
            f"Installing Multinode's runtime into an environment failed: {summarize_uv_error(output)}"
        )
    shown = str(shown_as / "requirements.txt")
    summary = summarize_uv_error(output)
    line = None
    at = _AT_POSITION.search(summary)
    if at is not None and at.group(1) == shown:
        line = requirements[: int(at.group(2))].count(b"\n") + 1
        summary = summary[: at.start()] + summary[at.end() :]
    where = shown if line is None else f"{shown}:{line}"
    return InvalidTasksFolderError(f"{where}: {summary}", path=str(shown_as), details=output, file=shown, line=line)


_AT_POSITION = re.compile(r" in `([^`]+)` at position (\d+)")
_CAUSE = re.compile(r"^\s*(?:cause|Caused by):\s*")
_STDERR_MARKERS = ("--- stderr", "[stderr]")


def summarize_uv_error(output: str) -> str:
    """uv's error, its causes and a hint on one line, without its carets and build logs.

    A build's own stderr is long; its last line is usually the reason, so that one is kept.
    """
    parts: list[str] = []
    hint = ""
    build_stderr: list[str] = []
    in_stderr = False
    for raw in output.splitlines():
        text = raw.strip()
        if not text or set(text) <= set("^~ "):
            continue
        if text in _STDERR_MARKERS:
            in_stderr = True
        elif text.startswith("error:"):
            parts.append(text.removeprefix("error:").strip())
        elif _CAUSE.match(raw):
            in_stderr = False
            parts.append(_CAUSE.sub("", raw).strip())
        elif text.startswith("hint:"):
            hint = hint or text.removeprefix("hint:").strip()
        elif in_stderr:
            if not text.startswith("---"):
                build_stderr.append(text)
        elif parts and raw[:1].isspace():
            parts[-1] += f" {text}"  # a cause continued on the next line
    if build_stderr:
        parts.append(build_stderr[-1])
    summary = ": ".join(parts) or next((line.strip() for line in reversed(output.splitlines()) if line.strip()), "")
    summary += f" (hint: {hint})" if hint else ""
    summary = " ".join(summary.split())
    return summary if len(summary) <= SUMMARY_MAX_CHARS else summary[: SUMMARY_MAX_CHARS - 3] + "..."


def shown_paths(text: str, code_dir: Path, shown_as: Path) -> str:
    """``text`` with the stored copy ``code_dir`` replaced by the tasks folder as the user named it.

    Tools print the stored copy absolute, through or past symlinks, or relative to their working
    directory (uv does); every spelling that ends in the digest folder is replaced.
    """
    spellings = {str(code_dir), str(code_dir.resolve())}
    cwd = os.getcwd()
    for spelling in list(spellings):
        relative = os.path.relpath(spelling, cwd)
        if not relative.startswith("."):  # "." or "..": not a spelling uv uses, and would match too much
            spellings.add(relative)
    shown = str(shown_as)
    for spelling in sorted(spellings, key=len, reverse=True):
        text = text.replace(spelling + os.sep, "" if shown == "." else shown + os.sep).replace(spelling, shown)
    return text
