"""The var dir: checked at start-up, then locked for the life of the IOC.

A var dir the IOC cannot use (not a directory, not writable, ``logs`` a file,
``state.sqlite`` a directory, …) is reported in one line before anything
starts, so that procServ or systemd show the reason instead of a traceback.
A lock file keeps a second IOC off the same var dir: two writers would not
corrupt SQLite, but they would kill each other's "leftover" scripts.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
from pathlib import Path

STATE_FILE = "state.sqlite"
LOGS_DIR = "logs"


class VarDirInUse(Exception):
    """Another IOC holds this var dir."""


class VarDirUnusable(Exception):
    """The var dir (or something in it) cannot be used; the text says what and why."""


def check_var_dir(var_dir: Path) -> None:
    """Make the var dir and its ``logs`` if needed; VarDirUnusable when either is unusable."""
    _make_dir(var_dir, "var dir")
    _check_writable(var_dir, "var dir")
    logs = var_dir / LOGS_DIR
    _make_dir(logs, "log dir")
    _check_writable(logs, "log dir")
    state = var_dir / STATE_FILE
    try:
        mode = os.stat(state).st_mode
    except FileNotFoundError:
        return
    except OSError as exc:
        raise VarDirUnusable(f"state database {state}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(mode):
        raise VarDirUnusable(
            f"state database {state} is not a file ({_kind(mode)}); move it out of the way"
        )


def _make_dir(path: Path, what: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        kind = _kind(os.stat(path).st_mode) if os.path.lexists(path) else "something else"
        raise VarDirUnusable(f"{what} {path} is not a directory ({kind})") from None
    except OSError as exc:
        raise VarDirUnusable(f"{what} {path}: cannot create it: {exc.strerror or exc}") from None
    if not path.is_dir():
        raise VarDirUnusable(f"{what} {path} is not a directory")


def _check_writable(path: Path, what: str) -> None:
    """Create and remove a file: the only test that also holds for root and read-only mounts."""
    probe = path / f".bgrscrpt-probe-{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(probe)
        raise VarDirUnusable(f"{what} {path} is not writable: {exc.strerror or exc}") from None


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISREG(mode):
        return "a file"
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    return "a special file"


class VarDirLock:
    """An exclusive ``flock`` on VAR/bgrscrpt.lock, held for the life of the IOC."""

    def __init__(self, var_dir: Path):
        self.path = var_dir / "bgrscrpt.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        """Raises VarDirInUse when another IOC holds it, VarDirUnusable when it cannot be made."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise VarDirUnusable(f"lock file {self.path}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise VarDirInUse(
                f"var dir {self.path.parent} is in use by another bgrscrpt_ioc (pid {holder}); "
                "give each IOC its own --var-dir"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # a full disk: the lock holds all the same; only the pid note is missing
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
