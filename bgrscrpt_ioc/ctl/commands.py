"""What each subcommand does over Channel Access, and how it knows it worked.

Every action reads the state before, puts, then waits (with a deadline) for the
state that proves the action took effect. When it did not, :class:`Failed`
carries the one line the operator sees, taken from MSG where the IOC said why.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar

from bgrscrpt_ioc.ca.pvdb import IOC_GROUP
from bgrscrpt_ioc.ca.watch_pvs import WATCH_GROUP

from .ca import CaError, Client, Reading, wait_until
from .logtail import log_lines, window_moved

MAX_SLOTS = 99
RUNNING_STATES = ("STARTING", "RUNNING")
DOWN_STATES = ("BACKOFF", "EXITED", "FATAL")
# A START that the IOC refuses (no script, a syntax error) changes nothing but MSG;
# this long without a new start means it was refused.
START_GRACE = 3.0
T = TypeVar("T")


class Failed(Exception):
    """The action did not take effect; the message says why, in one line."""


def slot_name(text: str) -> str:
    """``1``, ``01``, ``BGRSCRPT_01`` or ``bgrscrpt_01`` -> ``BGRSCRPT_01``."""
    match = re.fullmatch(r"(?:BGRSCRPT_)?(\d{1,2})", text.strip().upper())
    if not match or int(match.group(1)) == 0:
        raise ValueError(f"{text!r} is not a slot: give NN (01..99) or BGRSCRPT_NN")
    return f"BGRSCRPT_{int(match.group(1)):02d}"


def watch_prefix(name: str) -> str:
    return f"{WATCH_GROUP}:{name}:"


def check_ioc(client: Client) -> None:
    """Fail with the addressing to check when the IOC does not answer at all."""
    if not client.connected(f"{IOC_GROUP}:VERSION"):
        raise Failed(
            f"no IOC answers for prefix {client.prefix!r} "
            f"({client.name(IOC_GROUP + ':VERSION')} not found; "
            "check --prefix/MYPVPREFIX and EPICS_CA_ADDR_LIST)"
        )


def check_slot(client: Client, slot: str) -> None:
    check_ioc(client)
    if not client.connected(f"{slot}:STATUS", timeout=1.0):
        raise Failed(f"{slot}: no such slot on this IOC (slots: {', '.join(find_slots(client))})")


WATCH_NAMES = f"{WATCH_GROUP}:NAMES"
"""The IOC's watch names, separated by single spaces (older IOCs do not serve it)."""


def served_watches(client: Client) -> list[str] | None:
    """The watches the IOC has, from NAMES, in its order; None when it serves no NAMES."""
    if not client.connected(WATCH_NAMES, timeout=1.0):
        return None
    return str(client.value(WATCH_NAMES)).split()


def no_such_watch(name: str, served: list[str] | None) -> Failed:
    if served is None:
        return Failed(f"watch {name}: no such watch on this IOC")
    known = f"watches: {', '.join(served)}" if served else "it has no watches"
    return Failed(f"watch {name}: no such watch on this IOC ({known})")


def check_watch(client: Client, name: str) -> None:
    """Fail unless the IOC has watch ``name``: by NAMES, or by its STATE on an older IOC."""
    check_ioc(client)
    check_watch_in(client, name, served_watches(client))


def check_watch_in(client: Client, name: str, served: list[str] | None) -> None:
    """:func:`check_watch` with NAMES already read (``served``; None: the IOC serves none)."""
    if served is not None and name not in served:
        raise no_such_watch(name, served)
    if not client.connected(watch_prefix(name) + "STATE", timeout=1.0):
        raise no_such_watch(name, None)


def watches_to_show(
    served: list[str] | None, named: list[str], only: list[str] | None
) -> list[str]:
    """The watches ``status`` shows, in order.

    ``served``: the IOC's NAMES (None: an IOC without NAMES, where only the
    watches named here can be shown). ``named``: ``--watch`` and settings-file
    names, added after the IOC's own. ``only``: the watch names given as
    arguments, a filter (None: no filter; [] when only slots were asked for).
    """
    listed = list(dict.fromkeys([*(served or []), *named]))
    if only is None:
        return listed
    return [w for w in listed if w in only] + [w for w in sorted(set(only)) if w not in listed]


def find_slots(client: Client) -> list[str]:
    """The slots the IOC serves: BGRSCRPT_01 up to the first one missing."""
    names = [f"BGRSCRPT_{i:02d}" for i in range(1, MAX_SLOTS + 1)]
    # One search for all of them; the IOC answers the ones it has together.
    client.search([f"{name}:STATUS" for name in names])
    found = []
    for i, name in enumerate(names):
        if not client.connected(f"{name}:STATUS", timeout=1.0 if i == 0 else 0.3):
            break
        found.append(name)
    return found


# ---- status --------------------------------------------------------------------


@dataclass
class IocRow:
    version: str
    uptime: int
    msg: str = ""
    """BGRSCRPT:MSG, the IOC's own problems in words ("" from an IOC that has none)."""
    loop_lag: Reading | None = None
    """BGRSCRPT:LOOP_LAG in ms with its alarm; None from an IOC that does not measure it."""


@dataclass
class SlotRow:
    name: str
    status: str
    pid: int
    uptime: int
    starts: int
    msg: str
    usage: Usage | None = None  # None: an IOC that does not measure


@dataclass
class Usage:
    """A slot's resources as its PVs show them (CPU %, RSS and limit in MB, processes)."""

    cpu: float
    rss: float
    nproc: int
    memory_max: float


@dataclass
class WatchRow:
    name: str
    state: str
    alarm: str
    restarts: int
    last_restart: str
    enable: str
    msg: str


def read_ioc(client: Client) -> IocRow:
    row = IocRow(
        str(client.value(f"{IOC_GROUP}:VERSION")), int(client.value(f"{IOC_GROUP}:UPTIME"))
    )
    # An older IOC serves neither: its row has no health to show.
    if client.connected(f"{IOC_GROUP}:LOOP_LAG", timeout=0.5):
        row.msg = str(client.value(f"{IOC_GROUP}:MSG"))
        row.loop_lag = client.read(f"{IOC_GROUP}:LOOP_LAG")
    return row


def read_slot(client: Client, slot: str) -> SlotRow:
    value = client.value
    return SlotRow(
        slot,
        str(value(f"{slot}:STATUS")),
        int(value(f"{slot}:PID")),
        int(value(f"{slot}:UPTIME")),
        int(value(f"{slot}:START_CNT")),
        str(value(f"{slot}:MSG")),
        read_usage(client, slot),
    )


def read_usage(client: Client, slot: str) -> Usage | None:
    """CPU, RSS, NPROC and MEMORY_MAX; None from an IOC that serves no CPU."""
    if not client.connected(f"{slot}:CPU", timeout=0.5):
        return None
    value = client.value
    return Usage(
        float(value(f"{slot}:CPU")),
        float(value(f"{slot}:RSS")),
        int(value(f"{slot}:NPROC")),
        float(value(f"{slot}:MEMORY_MAX")),
    )


def read_watch(client: Client, name: str) -> WatchRow:
    p = watch_prefix(name)
    value = client.value
    return WatchRow(
        name,
        str(value(p + "STATE")),
        str(value(p + "ALARM")),
        int(value(p + "RESTART_CNT")),
        str(value(p + "LAST_RESTART")),
        str(value(p + "ENABLE")),
        str(value(p + "MSG")),
    )


def needs_attention(
    slots: list[SlotRow], watches: list[WatchRow], ioc: IocRow | None = None
) -> bool:
    """True when a slot is down on its own, a watch could not recover its IOC, or the
    IOC's own loop runs late enough to be in alarm."""
    late = ioc is not None and ioc.loop_lag is not None and ioc.loop_lag.severity > 0
    return (
        late
        or any(s.status in DOWN_STATES for s in slots)
        or any(w.state in ("FAILED", "LOCKOUT") for w in watches)
    )


# ---- slot actions --------------------------------------------------------------


def start(client: Client, slot: str, timeout: float) -> str:
    check_slot(client, slot)
    status, pid = client.value(f"{slot}:STATUS"), client.value(f"{slot}:PID")
    if status in RUNNING_STATES:
        raise Failed(f"{slot}: already {status.lower()} (pid {pid})")
    return _start_and_confirm(client, slot, "START", "started", timeout)


def restart(client: Client, slot: str, timeout: float) -> str:
    check_slot(client, slot)
    return _start_and_confirm(client, slot, "RESTART", "restarted", timeout)


def _start_and_confirm(client: Client, slot: str, command: str, done: str, timeout: float) -> str:
    """Put ``command`` and wait for a new run that reaches RUNNING."""
    starts_before = int(client.value(f"{slot}:START_CNT"))
    msg_before = client.value(f"{slot}:MSG")
    _put_command(client, slot, command)
    put_at = time.monotonic()

    def outcome() -> tuple[str, str] | None:
        starts, status = int(client.value(f"{slot}:START_CNT")), client.value(f"{slot}:STATUS")
        if starts > starts_before:
            if status == "RUNNING":
                return "ok", f"{slot}: {done}, pid {client.value(f'{slot}:PID')}"
            if status in DOWN_STATES:
                return "failed", f"{slot}: {status}: {client.value(f'{slot}:MSG')}"
        elif time.monotonic() - put_at > START_GRACE and status not in ("STOPPING",):
            # Nothing was started: the IOC refused (its MSG says why).
            msg = client.value(f"{slot}:MSG")
            return "failed", f"{slot}: not {done}: {msg or msg_before or 'no new run'}"
        return None

    lost: list[str] = []
    result = wait_until(_patiently(outcome, lost), timeout)
    if result is None:
        _fail_if_lost(slot, command, lost, timeout)
        status = client.value(f"{slot}:STATUS")
        raise Failed(f"{slot}: not RUNNING after {timeout:g} s (STATUS {status}; see MSG and LOG)")
    kind, text = result
    if kind != "ok":
        raise Failed(text)
    return text


def _patiently(check: Callable[[], T | None], lost: list[str]) -> Callable[[], T | None]:
    """``check`` for :func:`wait_until`, once the command is sent: an IOC that stops
    answering for a while (a network outage) is waited for rather than the end
    of the command; ``lost`` holds the last failure while it lasts."""

    def attempt() -> T | None:
        try:
            result = check()
        except CaError as exc:
            lost[:] = [str(exc)]
            return None
        lost.clear()
        return result

    return attempt


def _fail_if_lost(slot: str, command: str, lost: list[str], timeout: float) -> None:
    if lost:
        raise Failed(
            f"{slot}: {command} sent, then the IOC stopped answering ({lost[0]}); "
            f"its outcome is unknown after {timeout:g} s: see `bgrscrpt status`"
        )


def stop(client: Client, slot: str, timeout: float) -> str:
    check_slot(client, slot)
    status = client.value(f"{slot}:STATUS")
    if status in ("STOPPED", "EXITED", "FATAL"):
        raise Failed(f"{slot}: not running (STATUS {status})")
    _put_command(client, slot, "STOP")
    lost: list[str] = []
    if not wait_until(
        _patiently(lambda: client.value(f"{slot}:STATUS") == "STOPPED", lost), timeout
    ):
        _fail_if_lost(slot, "STOP", lost, timeout)
        status = client.value(f"{slot}:STATUS")
        raise Failed(f"{slot}: still {status} after {timeout:g} s: {client.value(f'{slot}:MSG')}")
    return f"{slot}: STOPPED: {client.value(f'{slot}:MSG')}"


def _put_command(client: Client, slot: str, command: str) -> None:
    try:
        client.write(f"{slot}:{command}", 1)
    except CaError as exc:
        raise Failed(f"{slot}: {exc}") from None


# ---- log -----------------------------------------------------------------------


def log_text(client: Client, slot: str) -> str:
    check_slot(client, slot)
    return str(client.value(f"{slot}:LOG"))


class Link(Enum):
    """News about the connection while following: lost, then back; and a gap, where
    LOG moved on by more than it shows (lines may be missing there)."""

    LOST = "lost"
    BACK = "back"
    GAP = "gap"


def follow_log(client: Client, slot: str, first: str) -> Iterator[str | Link]:
    """Yield every new line of LOG as it arrives, and the connection's news: LOST
    when it drops, BACK with the first update after (the client reconnects by itself),
    GAP before lines that do not follow on from the last ones shown."""
    updates = client.follow(f"{slot}:LOG")
    shown = log_lines(first)
    lost = False
    while True:
        text = updates.get()
        if text is None:
            if not lost:
                yield Link.LOST
            lost = True
            continue
        if lost:
            lost = False
            yield Link.BACK
        lines = log_lines(text)
        gained, gap = window_moved(shown, lines)
        if gap:
            yield Link.GAP
        yield from gained
        shown = lines


# ---- watch actions -------------------------------------------------------------


def watch_enable(client: Client, name: str, on: bool, timeout: float) -> str:
    check_watch(client, name)
    p = watch_prefix(name)
    want = "On" if on else "Off"
    try:
        client.write(p + "ENABLE", 1 if on else 0)
    except CaError as exc:
        raise Failed(f"watch {name}: {exc}") from None

    def settled() -> bool:
        state = client.value(p + "STATE")
        return client.value(p + "ENABLE") == want and ((state == "DISABLED") != on)

    if not wait_until(settled, timeout):
        raise Failed(
            f"watch {name}: ENABLE {client.value(p + 'ENABLE')}, STATE {client.value(p + 'STATE')}"
            f" after {timeout:g} s: {client.value(p + 'MSG')}"
        )
    return f"watch {name}: {'enabled' if on else 'disabled'}, STATE {client.value(p + 'STATE')}"


def watch_restart(client: Client, name: str, timeout: float) -> str:
    """A manual restart through the watch's own path.

    Done when the watch has counted a new restart and sent it: STATE VERIFYING
    (waiting for the PVs to recover) or OK. FAILED or LOCKOUT after the new
    restart means it could not be sent; MSG says why.
    """
    check_watch(client, name)
    p = watch_prefix(name)
    count_before = int(client.value(p + "RESTART_CNT"))
    last_before = client.value(p + "LAST_RESTART")
    try:
        client.write(p + "RESTART", 1)
    except CaError as exc:
        raise Failed(f"watch {name}: {exc}") from None

    def outcome() -> tuple[bool, str] | None:
        counted = int(client.value(p + "RESTART_CNT")) > count_before
        if not counted and client.value(p + "LAST_RESTART") == last_before:
            return None
        state = client.value(p + "STATE")
        if state in ("VERIFYING", "OK"):
            return True, f"watch {name}: restart sent, STATE {state}: {client.value(p + 'MSG')}"
        if state in ("FAILED", "LOCKOUT"):
            return False, f"watch {name}: restart {state}: {client.value(p + 'MSG')}"
        return None  # RESTARTING: the restart is still under way

    result = wait_until(outcome, timeout)
    if result is None:
        state, msg = client.value(p + "STATE"), client.value(p + "MSG")
        raise Failed(f"watch {name}: no restart done after {timeout:g} s (STATE {state}): {msg}")
    ok, text = result
    if not ok:
        raise Failed(text)
    return text
