"""Stored versions for the local backend: content-addressed code and cached Python environments.

``$MULTINODE_HOME/code/DIGEST/`` holds a copy of the tasks folder (its ``.env`` included: the values
stay on this disk and never pass through Temporal). ``$MULTINODE_HOME/envs/KEY/`` is a virtual
environment built with uv from requirements.txt plus Multinode's runtime; KEY hashes the
requirements, the Python version and the runtime pins, so unchanged requirements never reinstall.

A copy or an environment is shared by every version with the same content, so a registration holds
each with a shared ``flock`` on ``DIGEST.lock`` / ``KEY.lock`` beside it until it ends. One that fails
removes what it created itself (never what an earlier version uses), unless another registration holds
it or one that used it succeeded (it then wrote ``kept`` into the lock file).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO

from multinode._credentials import credential_free_env
from multinode.errors import InvalidTasksFolderError, MultinodeError, ProvisionerError

PACKAGE_DIR = Path(__file__).resolve().parent.parent
"""The ``multinode`` package itself (copied into each environment as its runtime)."""
IGNORED_NAMES = frozenset(
    {"__pycache__", ".git", ".hg", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
"""Folder entries left out of a stored version."""
RUNTIME_DISTRIBUTIONS = ("temporalio", "jsonpickle", "pydantic", "python-dotenv", "cryptography")
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
    holds: list[_Hold] = field(default_factory=list, compare=False, repr=False)
    """The registration's holds on its stored copy and environment: ``keep`` or ``discard`` releases them."""


class BuildCancelled(Exception):
    """The registration was interrupted while storing a version (``cancelled`` was set)."""


def _ignored(name: str) -> bool:
    return name in IGNORED_NAMES or name.endswith(".pyc")


def tasks_files(tasks_dir: Path, *, shown_as: Path | None = None) -> list[Path]:
    """The files of a tasks folder that make up a version, sorted (see ``_walk``)."""
    return _walk(tasks_dir, shown_as)[1]


def _walk(tasks_dir: Path, shown_as: Path | None = None) -> tuple[list[Path], list[Path]]:
    """The folders and files of a tasks folder that make up a version, as paths under ``tasks_dir``, in
    ``os.walk``'s top-down order with each folder's entries sorted (the order ``code_digest`` hashes).

    A symbolic link counts as what it points to, which must be inside the folder: a link out of it (to
    the home folder, say) would store and ship whatever lies there, and a link to a folder that holds it
    would never end. Both are refused, as are dangling links and special files (a named pipe would
    block the read). Errors name paths as ``shown_as`` (the folder as the user typed it).
    """
    root = Path(os.path.realpath(tasks_dir))
    shown = shown_as if shown_as is not None else tasks_dir

    def named(path: Path) -> str:
        return str(shown / path.relative_to(tasks_dir))

    def refuse(path: Path, message: str) -> InvalidTasksFolderError:
        return InvalidTasksFolderError(f"{named(path)} {message}", path=str(shown), file=named(path))

    folders: list[Path] = []
    files: list[Path] = []
    # Folders still to list: the path under tasks_dir, and the real folders from the root to it.
    pending: list[tuple[Path, tuple[Path, ...]]] = [(tasks_dir, (root,))]
    while pending:
        folder, chain = pending.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            raise refuse(folder, f"cannot be read: {exc.strerror or exc}.") from None
        subfolders: list[tuple[Path, tuple[Path, ...]]] = []
        for entry in entries:
            if _ignored(entry.name):
                continue
            path = Path(entry.path)
            real = _link_target(path, root, refuse) if entry.is_symlink() else chain[-1] / entry.name
            try:
                mode = os.stat(real).st_mode
            except OSError as exc:
                raise refuse(path, f"cannot be read: {exc.strerror or exc}.") from None
            if stat.S_ISDIR(mode):
                if real in chain:
                    where = named(tasks_dir / real.relative_to(root)) if real != root else str(shown)
                    raise refuse(path, f"is a symbolic link loop: it points to {where}, a folder that holds it.")
                subfolders.append((path, (*chain, real)))
            elif stat.S_ISREG(mode):
                files.append(path)
            else:
                raise refuse(path, "is not a regular file or folder (a named pipe, socket or device): remove it.")
        folders.extend(p for p, _ in subfolders)
        pending.extend(reversed(subfolders))  # the first subfolder is listed next, as os.walk does
    return folders, files


def _link_target(link: Path, root: Path, refuse: Callable[[Path, str], Exception]) -> Path:
    """The real path ``link`` points to, once it is known to exist inside ``root``."""
    try:
        raw = os.readlink(link)
        target = Path(os.path.realpath(link, strict=True))
    except FileNotFoundError:
        target = Path(os.path.realpath(link))
        if target == root or target.is_relative_to(root):
            raise refuse(link, f"is a symbolic link to {raw}, which does not exist: remove it.") from None
    except OSError as exc:  # ELOOP: links that lead to each other
        raise refuse(link, "is a symbolic link loop: it leads back to itself; remove it.") from exc
    if not (target == root or target.is_relative_to(root)):
        raise refuse(
            link,
            f"is a symbolic link to {target}, outside the tasks folder: a version holds only what is inside "
            "the folder; copy what it needs into the folder instead.",
        )
    return target


def code_digest(tasks_dir: Path, *, shown_as: Path | None = None) -> str:
    return _digest(tasks_dir, tasks_files(tasks_dir, shown_as=shown_as), shown_as)


def _digest(tasks_dir: Path, files: list[Path], shown_as: Path | None) -> str:
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(tasks_dir).as_posix().encode() + b"\0")
        try:
            content = path.read_bytes()
        except OSError as exc:
            shown = str((shown_as if shown_as is not None else tasks_dir) / path.relative_to(tasks_dir))
            raise InvalidTasksFolderError(
                f"{shown} cannot be read: {exc.strerror or exc}.", path=str(shown_as or tasks_dir), file=shown
            ) from None
        digest.update(hashlib.sha256(content).digest())
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

    def build(
        self,
        tasks_dir: Path,
        *,
        shown_as: Path | None = None,
        cancelled: threading.Event | None = None,
        python: Path | None = None,
    ) -> BuiltVersion:
        """Store ``tasks_dir`` and its environment; errors name it as ``shown_as`` (as the user typed it).
        The environment runs ``python`` (default: this interpreter; a fargate version's, the image's).

        The stored copy and the environment stay held until ``keep`` (the version is recorded) or
        ``discard`` (the registration failed: what it created goes). Setting ``cancelled`` stops the build
        (``BuildCancelled``), removing what it created.
        """
        folders, files = _walk(tasks_dir, shown_as)
        digest = _digest(tasks_dir, files, shown_as)
        requirements = tasks_dir / "requirements.txt"
        req_bytes = requirements.read_bytes() if requirements.is_file() else b""
        version = sys.version if python is None else _python_version(python)
        key = hashlib.sha256(b"\0".join([version.encode(), "\n".join(runtime_pins()).encode(), req_bytes])).hexdigest()[
            :24
        ]
        code_dir, env_dir = self.code_dir(digest), self.env_dir(key)
        holds: list[_Hold] = []
        try:
            holds.append(
                _hold(
                    code_dir,
                    code_dir.is_dir,
                    lambda: self._store_code(tasks_dir, folders, files, code_dir, cancelled),
                    cancelled,
                )
            )
            try:
                holds.append(
                    _hold(
                        env_dir,
                        (env_dir / ENV_READY).exists,
                        lambda: self._build_env(
                            env_dir, code_dir / "requirements.txt" if req_bytes else None, cancelled, python
                        ),
                        cancelled,
                    )
                )
            except _InstallFailed as failed:
                raise _install_error(failed.output, code_dir, shown_as or tasks_dir, req_bytes) from None
        except BaseException:
            for hold in holds:
                hold.release(discard=True)
            raise
        return BuiltVersion(
            code_digest=digest,
            artifact={"code_digest": digest, "env_key": key},
            code_dir=code_dir,
            python=self.env_python(key),
            holds=holds,
        )

    def keep(self, built: BuiltVersion) -> None:
        """The version is recorded: its stored copy and environment stay for good."""
        for hold in built.holds:
            hold.keep()

    def discard(self, built: BuiltVersion) -> None:
        """The registration failed: remove the stored copy and environment it created (none that a
        registered version or another registration in progress uses)."""
        for hold in built.holds:
            hold.release(discard=True)

    def link_runtime(self) -> Path:
        """``$MULTINODE_HOME/runtime`` holds only a link to this ``multinode`` package, so a version's
        environment imports Multinode without seeing the control plane's other packages."""
        target = PACKAGE_DIR
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

    def _store_code(
        self,
        tasks_dir: Path,
        folders: list[Path],
        files: list[Path],
        final: Path,
        cancelled: threading.Event | None,
    ) -> bool:
        """Copy the listed folders and files (a link inside the folder as what it points to) to ``final``."""
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name[:12]}-", dir=final.parent))
        try:
            for folder in folders:
                (tmp / folder.relative_to(tasks_dir)).mkdir(parents=True, exist_ok=True)
            for path in files:
                _check(cancelled)
                shutil.copy2(path, tmp / path.relative_to(tasks_dir))
            for folder in [*reversed(folders), tasks_dir]:  # modes and times, as copytree keeps them
                shutil.copystat(folder, tmp / folder.relative_to(tasks_dir))
            try:
                os.replace(tmp, final)
            except OSError:  # stored meanwhile by a Multinode that takes no lock
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
                return False
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return True

    def _build_env(
        self, env_dir: Path, requirements: Path | None, cancelled: threading.Event | None, python: Path | None = None
    ) -> bool:
        shutil.rmtree(env_dir, ignore_errors=True)  # a build that was interrupted
        try:
            uv = _uv()
            # Build scripts of the requirements run here: without Temporal credentials or payload keys.
            env = {**credential_free_env(os.environ), "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": str(env_dir)}
            interpreter = str(python or sys.executable)
            created = _run([uv, "venv", "--quiet", "--python", interpreter, str(env_dir)], env, cancelled)
            if created.returncode != 0:
                raise ProvisionerError(
                    f"Creating the environment {env_dir} failed: {summarize_uv_error(created.stderr)}"
                )
            install = [uv, "pip", "install", "--quiet", "--python", str(env_dir / "bin" / "python"), *runtime_pins()]
            if requirements is not None:
                install += ["-r", str(requirements)]
            installed = _run(install, env, cancelled)
            if installed.returncode != 0:
                raise _InstallFailed((installed.stderr or installed.stdout).strip())
            purelib = _purelib(env_dir, python)
            (purelib / "_multinode_runtime.pth").write_text(str(self.link_runtime()) + "\n")
            (env_dir / ENV_READY).touch()
        except BaseException:
            shutil.rmtree(env_dir, ignore_errors=True)  # no half-built environment stays behind
            raise
        return True


def _python_version(python: Path) -> str:
    """``sys.version`` of another interpreter."""
    done = subprocess.run([str(python), "-c", "import sys; print(sys.version)"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ProvisionerError(f"{python} does not run: {(done.stderr or done.stdout).strip()[-300:]}")
    return done.stdout.strip()


def _purelib(env_dir: Path, python: Path | None) -> Path:
    """The site-packages folder of the environment (another interpreter's is asked: its version names it)."""
    if python is None:
        return Path(sysconfig.get_path("purelib", vars={"base": str(env_dir), "platbase": str(env_dir)}))
    code = "import sysconfig; print(sysconfig.get_path('purelib'))"
    done = subprocess.run([str(env_dir / "bin" / "python"), "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise ProvisionerError(f"The environment {env_dir} does not run: {done.stderr.strip()[-300:]}")
    return Path(done.stdout.strip())


ENV_READY = ".multinode-ready"
"""Written into an environment once it is complete."""
KEPT = "kept"
"""Written into a stored item's lock file once a recorded version uses the item."""


class _Hold:
    """A registration's shared ``flock`` on one stored item (a code copy or an environment)."""

    def __init__(self, item: Path, lock_path: Path, lock: IO[str], created: bool) -> None:
        self.item = item
        self.lock_path = lock_path
        self.lock = lock
        self.created = created

    def keep(self) -> None:
        if self.lock.closed:
            return
        try:
            self.lock.seek(0)
            if KEPT not in self.lock.read():
                self.lock.write(KEPT + "\n")  # appended: the file is open in "a+" mode
                self.lock.flush()
        finally:
            self.lock.close()

    def release(self, *, discard: bool) -> None:
        """Let go of the item; with ``discard``, remove it if this registration created it, nobody else
        holds it and no recorded version uses it."""
        if self.lock.closed:
            return
        try:
            if not (discard and self.created):
                return
            try:
                fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return  # another registration uses it now: it decides
            self.lock.seek(0)
            if not _same_file(self.lock, self.lock_path) or KEPT in self.lock.read():
                return
            # Renamed first, so that nobody ever sees half of it.
            gone = self.item.with_name(f".{self.item.name}-removed-{os.getpid()}")
            try:
                os.rename(self.item, gone)
            except FileNotFoundError:
                pass
            else:
                shutil.rmtree(gone, ignore_errors=True)
            self.lock_path.unlink(missing_ok=True)
        finally:
            self.lock.close()


def _hold(item: Path, ready: Callable[[], bool], make: Callable[[], bool], cancelled: threading.Event | None) -> _Hold:
    """Hold ``item`` (shared), making it first (exclusively, ``make`` returns whether it did) if it is not
    ``ready``. Its lock file, ``ITEM.lock``, may be removed by whoever removes the item, so every lock
    taken is checked to be on the file the path names now."""
    lock_path = item.with_name(item.name + ".lock")
    item.parent.mkdir(parents=True, exist_ok=True)
    while True:
        lock = _locked(lock_path, fcntl.LOCK_SH, cancelled)
        try:
            created = False
            if not ready():
                _flock(lock, fcntl.LOCK_EX, cancelled)
                if _same_file(lock, lock_path) and not ready():
                    try:
                        created = make()
                    except BaseException:
                        lock_path.unlink(missing_ok=True)  # nothing was made: its lock goes too
                        raise
                fcntl.flock(lock, fcntl.LOCK_SH)
            if _same_file(lock, lock_path) and ready():
                return _Hold(item, lock_path, lock, created)
        except BaseException:
            lock.close()
            raise
        lock.close()


def _locked(path: Path, mode: int, cancelled: threading.Event | None) -> IO[str]:
    while True:
        lock = open(path, "a+")  # noqa: SIM115 - the hold closes it
        try:
            _flock(lock, mode, cancelled)
        except BaseException:
            lock.close()
            raise
        if _same_file(lock, path):
            return lock
        lock.close()  # removed meanwhile with what it locked: lock the new one


def _flock(lock: IO[str], mode: int, cancelled: threading.Event | None) -> None:
    """``flock``, waiting (for another registration's build) in a way that ``cancelled`` interrupts."""
    while True:
        try:
            fcntl.flock(lock, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            _check(cancelled)
            time.sleep(0.05)


def _same_file(lock: IO[str], path: Path) -> bool:
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(lock.fileno())
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


def _check(cancelled: threading.Event | None) -> None:
    if cancelled is not None and cancelled.is_set():
        raise BuildCancelled()


def _uv() -> str:
    try:
        from uv import find_uv_bin

        return find_uv_bin()
    except (ImportError, FileNotFoundError):
        found = shutil.which("uv")
        if found is None:
            raise ProvisionerError("uv is not installed; install Multinode with its dependencies.") from None
        return found


def _run(
    command: list[str], env: dict[str, str], cancelled: threading.Event | None = None
) -> subprocess.CompletedProcess[str]:
    """Run uv in a session of its own (stopped with what it started when ``cancelled`` is set)."""
    process = subprocess.Popen(
        command,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + ENV_BUILD_TIMEOUT_SECONDS
    try:
        while True:
            try:
                out, err = process.communicate(timeout=0.2)
                return subprocess.CompletedProcess(command, process.returncode, out, err)
            except subprocess.TimeoutExpired:
                _check(cancelled)
                if time.monotonic() > deadline:
                    raise ProvisionerError(
                        f"Building an environment with uv took longer than {ENV_BUILD_TIMEOUT_SECONDS} s."
                    ) from None
    except BaseException:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        process.communicate()
        raise


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
