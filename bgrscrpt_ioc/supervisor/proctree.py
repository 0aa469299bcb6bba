"""Processes seen through /proc: children, descendants, the slot marker, RSS and CPU.

Standard library only: the keeper (``keeper.py``, run as ``python -I -S``)
imports this file too. Every reader tolerates a process that exits while it is
being read: it is then simply not there.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Iterable, Sequence

MARK_VAR = "BGRSCRPT_MARK"
"""Set for every script to ``<instance>/<slot>``; every process it starts inherits it."""

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_KILL_ROUNDS = 50


def mark_value(instance: str, slot: str) -> str:
    """The marker of ``slot`` of the IOC ``instance``."""
    return f"{instance}/{slot}"


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (of every thread; zombies included)."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                out.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return out


def descendants(roots: Iterable[int]) -> list[int]:
    """``roots`` and everything below them, each once, parents before children."""
    seen: set[int] = set()
    order: list[int] = []
    stack = list(roots)
    while stack:
        pid = stack.pop()
        if pid in seen:
            continue
        seen.add(pid)
        order.append(pid)
        stack.extend(children(pid))
    return order


def environ_value(pid: int, name: str) -> str | None:
    """The value of ``name`` in the environment ``pid`` was started with, or None."""
    needle = name.encode() + b"="
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
    except OSError:
        return None
    for entry in environ.split(b"\0"):
        if entry.startswith(needle):
            return entry[len(needle) :].decode("utf-8", "replace")
    return None


def stat(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the command name (field 3 onwards), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return raw.rsplit(b")", 1)[1].decode().split()


def is_zombie(pid: int) -> bool:
    fields = stat(pid)
    return fields is None or fields[0] in ("Z", "X")


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 when gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * PAGE_SIZE
    except (OSError, IndexError, ValueError):
        return 0


def pss_bytes(pid: int) -> int:
    """Proportional set size of ``pid``: each page it shares counted as its share
    (``/proc/PID/smaps_rollup``); its RSS when that cannot be read, 0 when gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, IndexError, ValueError):
        pass
    return rss_bytes(pid)


def tree_memory_bytes(pids: Sequence[int]) -> int:
    """Resident memory of a group of processes, each page counted once.

    Summed RSS counts a page once per process that maps it: a script that forks
    workers after filling its memory (multiprocessing, ``os.fork``) would show,
    and be limited on, a multiple of what it uses. So for more than one process,
    the sum of their PSS; for one, its RSS (cheap: PSS walks every page table,
    ms for a large process).
    """
    if len(pids) == 1:
        return rss_bytes(pids[0])
    return sum(map(pss_bytes, pids))


def cpu_ticks(pid: int) -> tuple[int, int] | None:
    """(utime+stime+cutime+cstime, start time), both in clock ticks, or None when gone.

    cutime/cstime hold the time of children it has reaped, so a short-lived helper
    that its own parent waited for is counted too.
    """
    fields = stat(pid)
    if fields is None:
        return None
    # /proc/PID/stat fields 14-17 and 22; fields[0] is field 3.
    return sum(int(v) for v in fields[11:15]), int(fields[19])


def signal_all(pids: Iterable[int], signum: int) -> None:
    for pid in pids:
        if pid > 1:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signum)


def stop_and_kill(find: Callable[[], Iterable[int]]) -> list[int]:
    """SIGKILL every process ``find`` returns, also those they fork meanwhile.

    Each round stops (SIGSTOP) what is found and looks again, until a round finds
    nothing new: a stopped process cannot fork. Then all are SIGKILLed. Returns
    the pids killed.
    """
    stopped: list[int] = []
    seen: set[int] = set()
    for _ in range(_KILL_ROUNDS):
        new = [pid for pid in find() if pid not in seen and pid > 1 and pid != os.getpid()]
        if not new:
            break
        seen.update(new)
        stopped.extend(new)
        signal_all(new, signal.SIGSTOP)
    signal_all(stopped, signal.SIGKILL)
    return stopped


def slot_members(
    leader: int | None, orphan_parent: int, instance: str, slot: str, leaders: Iterable[int] = ()
) -> list[int]:
    """Every process of a slot under the child subreaper ``orphan_parent``.

    The run's ``leader`` and all its descendants, whatever their environment; and
    each orphan the subreaper adopted (its parent died: a double fork, a daemon)
    that carries the slot's marker, with all its descendants. ``leaders`` (every
    slot's leader) are never taken for orphans.
    """
    skip = set(leaders)
    if leader is not None:
        skip.add(leader)
    wanted = mark_value(instance, slot)
    roots = [leader] if leader is not None else []
    for pid in children(orphan_parent):
        if pid not in skip and environ_value(pid, MARK_VAR) == wanted:
            roots.append(pid)
    return [pid for pid in descendants(roots) if not is_zombie(pid)]


def marked(instance: str, slot: str | None = None) -> list[int]:
    """Every process on the machine carrying this IOC instance's marker (of ``slot``,
    or of any slot). Reads every /proc/PID/environ: for the sweep at start-up."""
    prefix = mark_value(instance, slot or "")
    me = os.getpid()
    out = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        value = environ_value(int(entry.name), MARK_VAR)
        if value is None:
            continue
        ours = value == prefix if slot else value.startswith(prefix)
        if ours and not is_zombie(int(entry.name)):
            out.append(int(entry.name))
    return out
