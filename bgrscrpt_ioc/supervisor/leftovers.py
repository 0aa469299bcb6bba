"""Clean up after an IOC that died without stopping its scripts.

The guardian process normally kills every script group when the IOC dies, but
if the whole machine was busy or the guardian itself was killed, a group may
survive. The state database knows which runs never ended; at start-up we kill
whatever is still in those process groups, provided it really is that slot's
script (a recycled PID must never make us kill a stranger).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path


def _pgid_and_slot(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    # Field 5 of /proc/PID/stat, counted after the parenthesised command name.
    pgid = int(stat.rsplit(")", 1)[1].split()[2])
    for entry in environ.split(b"\0"):
        if entry.startswith(b"BGRSCRPT_IOC_NAME="):
            return pgid, entry.split(b"=", 1)[1].decode(errors="replace")
    return pgid, ""


def kill_leftover_group(pgid: int, slot: str) -> list[int]:
    """SIGKILL every process in group ``pgid`` that runs as ``slot``; return their PIDs."""
    killed = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        found = _pgid_and_slot(pid)
        if found is None or found != (pgid, slot):
            continue
        try:
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        except ProcessLookupError:
            pass
    return killed
