"""Clean up after an IOC that died without stopping its scripts.

The keeper normally kills everything the scripts started when the IOC dies, but
if the keeper was killed too (or the machine went down hard), processes may be
left. At start-up, before anything is started, the IOC on the same var dir (so
the same instance id) kills:

- everything in its slots' cgroups (and in cgroups of slots it no longer has,
  which are then removed);
- every process on the machine whose environment carries its marker
  ``BGRSCRPT_MARK=<id>/…``, whichever mechanism the last IOC used;
- what is left in the process group of a run that an older IOC (before markers)
  recorded as unfinished, provided it runs as that slot's script.

A process is only ever killed for being in this IOC's cgroup or carrying this
IOC's marker or slot: a recycled pid never makes us kill a stranger.
"""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

from ..state_db import StateDB
from . import cgroups, proctree
from .containment import Containment

log = logging.getLogger("bgrscrpt_ioc")  # the IOC's own: these lines are about start-up


def sweep(containment: Containment) -> dict[str, list[int]]:
    """Kill what a previous IOC with this instance id left; the pids killed, by slot."""
    killed: dict[str, list[int]] = {}
    base = containment.base
    if base is not None and base.is_dir():
        for child in sorted(p for p in base.iterdir() if p.is_dir()):
            pids = cgroups.kill(str(child)) if cgroups.populated(str(child)) else []
            if pids:
                killed.setdefault(child.name, []).extend(pids)
            if child.name not in containment.slots:
                cgroups.remove(str(child))
    slot_of: dict[int, str] = {}

    def marked() -> list[int]:
        pids = proctree.marked(containment.instance)
        for pid in pids:
            if pid not in slot_of:
                value = proctree.environ_value(pid, proctree.MARK_VAR) or ""
                slot_of[pid] = value.rsplit("/", 1)[-1]
        return pids

    for pid in proctree.stop_and_kill(marked):
        pids = killed.setdefault(slot_of.get(pid, "?"), [])
        if pid not in pids:
            pids.append(pid)
    return killed


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


def clean_leftovers(db: StateDB, containment: Containment) -> None:
    """Runs a dead IOC left open: kill what survives of them, and record how they ended.

    When the IOC dies without stopping its scripts (SIGKILL, a crash), the keeper
    SIGKILLs every process of every slot (and the kernel each script leader, through
    PR_SET_PDEATHSIG): such a run ended by SIGKILL, whoever sent it. What survived
    anyway is found by cgroup and marker (``sweep``) or by its process group.
    """
    swept = sweep(containment)  # by cgroup and marker
    for run in db.open_runs():
        swept.setdefault(run.slot, []).extend(kill_leftover_group(run.pid, run.slot))
    for slot, killed in swept.items():
        if killed:
            log.warning(
                "%s: killed %d process(es) left by a previous IOC: %s", slot, len(killed), killed
            )
    for run in db.open_runs():
        if not swept.get(run.slot):
            log.warning(
                # %r: a pid edited into the file by hand may be anything
                "%s: the run of pid %r ended when the previous IOC died (killed by SIGKILL)",
                run.slot,
                run.pid,
            )
        db.run_ended(run.id, -int(signal.SIGKILL), "ioc-exit")
