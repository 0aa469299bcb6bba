"""One cgroup v2 directory: its processes, signals to all of them, kill, removal, usage.

Standard library only: the keeper (``keeper.py``, run as ``python -I -S``)
imports this file too. Every call takes the cgroup's directory; nothing here
decides which cgroups exist (that is ``containment.py``).
"""

from __future__ import annotations

import contextlib
import errno
import os
import time

try:
    from .proctree import signal_all, stop_and_kill
except ImportError:  # the keeper's copy: imported as a top-level module, next to proctree
    from proctree import signal_all, stop_and_kill  # type: ignore[no-redef, import-not-found]

_EMPTY_TIMEOUT = 2.0


def procs(path: str) -> list[int]:
    """The processes in cgroup ``path`` (not its children cgroups); [] when it is gone."""
    try:
        with open(os.path.join(path, "cgroup.procs"), "rb") as f:
            return [int(pid) for pid in f.read().split()]
    except OSError:
        return []


def tree_procs(path: str) -> list[int]:
    """The processes in ``path`` and in every cgroup below it."""
    out: list[int] = []
    for dirpath, _dirs, _files in os.walk(path):
        out.extend(procs(dirpath))
    return out


def populated(path: str) -> bool:
    """Whether any process is in ``path`` or below (``cgroup.events``); False when gone."""
    try:
        with open(os.path.join(path, "cgroup.events"), "rb") as f:
            for line in f:
                if line.startswith(b"populated "):
                    return line.split()[1] == b"1"
    except OSError:
        return False
    return bool(tree_procs(path))


def place(path: str, pid: int) -> None:
    """Move ``pid`` (the whole process) into cgroup ``path``. Raises OSError.

    A migration waits for an RCU grace period: several ms, up to ~15 ms on a quiet
    2-core VM. Never call it on the IOC's event loop.
    """
    fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY)
    try:
        os.write(fd, str(pid).encode())
    finally:
        os.close(fd)


def signal(path: str, signum: int) -> None:
    """Send ``signum`` to every process in ``path`` and below (a fork meanwhile may miss it)."""
    signal_all(tree_procs(path), signum)


def kill(path: str) -> list[int]:
    """SIGKILL every process in ``path`` and below, also those forking meanwhile.

    ``cgroup.kill`` (Linux 5.14) does it in the kernel in one step; before that,
    ``stop_and_kill``. Returns the pids seen before the kill (for the log).
    """
    seen = tree_procs(path)
    try:
        fd = os.open(os.path.join(path, "cgroup.kill"), os.O_WRONLY)
    except FileNotFoundError:
        if not os.path.isdir(path):
            return []
        return stop_and_kill(lambda: tree_procs(path))
    try:
        os.write(fd, b"1")
    finally:
        os.close(fd)
    return seen


def remove(path: str, timeout: float = _EMPTY_TIMEOUT) -> bool:
    """Remove ``path`` and the cgroups below it once they are empty (killed processes take
    a moment to leave). True when gone; False if still in use after ``timeout``."""
    deadline = time.monotonic() + timeout
    for dirpath, _dirs, _files in sorted(os.walk(path), key=lambda w: -w[0].count(os.sep)):
        while True:
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError as exc:
                if exc.errno != errno.EBUSY or time.monotonic() >= deadline:
                    return False
                time.sleep(0.01)
    return not os.path.exists(path)


def cpu_usec(path: str) -> int | None:
    """CPU time used by every process that ever ran in ``path`` and below, in µs.

    ``cpu.stat`` ``usage_usec`` is kept for every cgroup v2, controller or not.
    """
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open(os.path.join(path, "cpu.stat"), "rb") as f,
    ):
        for line in f:
            if line.startswith(b"usage_usec "):
                return int(line.split()[1])
    return None


def memory_bytes(path: str) -> int | None:
    """Resident memory of ``path`` and below from ``memory.stat`` (anonymous + mapped
    files, without the page cache, which the kernel reclaims), or None when the
    memory controller is not enabled for it."""
    try:
        with open(os.path.join(path, "memory.stat"), "rb") as f:
            values = dict(line.split()[:2] for line in f if line.count(b" ") == 1)
    except (OSError, ValueError):
        return None
    try:
        return int(values[b"anon"]) + int(values.get(b"file_mapped", 0))
    except (KeyError, ValueError):
        return None
