"""Is a process gone, waiting until it is, and finding what a run left running.

A zombie counts as gone everywhere here: it runs no code and holds no port; it
only waits for its parent to reap it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

WAIT_TIMEOUT = 10.0


def _stat_fields(pid: int | str) -> list[str] | None:
    """``/proc/<pid>/stat`` after the command name (field 3, the state, first); None when
    there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs: reaped, or a zombie nobody has reaped yet."""
    fields = _stat_fields(pid)
    return fields is None or fields[0] == "Z"


async def wait_gone(pid: int, timeout: float = WAIT_TIMEOUT) -> None:
    """Wait for any process (not only a child) to exit, through a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(fd, exited.set)
    try:
        await asyncio.wait_for(exited.wait(), timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)


def session_alive(sid: int) -> bool:
    """Whether any process of session ``sid`` still runs."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)
        if fields is not None and fields[0] != "Z" and int(fields[3]) == sid:  # field 6: sid
            return True
    return False


def tagged_processes(var: str, tag: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment has ``var=tag``,
    except this one. Every process started with that variable set carries it, and so
    do their children, however far they wander from their parents."""
    needle = f"{var}={tag}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in Path(f"/proc/{entry.name}/environ").read_bytes().split(b"\0"):
                continue
            cmd = Path(f"/proc/{entry.name}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if not process_gone(int(entry.name)):
            found.append((int(entry.name), cmd.decode(errors="replace").strip()))
    return found


def kill_tagged(var: str, tag: str, grace: float = 3.0) -> list[tuple[int, str]]:
    """SIGKILL whatever carries ``var=tag`` and still runs after ``grace`` seconds (a
    process already sent SIGKILL may take a moment to be gone); what was killed."""
    deadline = time.monotonic() + grace
    left = tagged_processes(var, tag)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = tagged_processes(var, tag)
    for pid, _ in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left
