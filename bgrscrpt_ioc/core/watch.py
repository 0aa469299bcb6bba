"""The life cycle of one watch (alarm recovery), as plain code with no I/O.

A :class:`WatchCore` is told what the watched PVs do (:meth:`WatchCore.update`),
what time it is (:meth:`WatchCore.tick`), what operators put (ENABLE, RESTART)
and how a restart it asked for went. It answers with actions for the runner:
:class:`Restart` (send one) and :class:`Outcome` (record one in the state
database). Times are seconds on one monotonic clock chosen by the caller.

    DISABLED  ENABLE Off; nothing happens until ENABLE On
    OK        no watched PV is in the trigger condition
    PENDING   the condition holds; a restart is due once it has held `delay`
    RESTARTING a restart is being sent; the runner reports back
    VERIFYING restarted; waiting for every PV to be connected and below `severity`
    FAILED    the restart could not be sent or did not cure; retried after a back-off
    LOCKOUT   `max_restarts` within `window` were not enough; only ENABLE or RESTART act
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum

from .setting_keys import Choice, Flag, NotBelow, Range, setting


class WatchState(IntEnum):
    """STATE of a watch; the order is the PV's enum order (docs/recovery.md)."""

    DISABLED = 0
    OK = 1
    PENDING = 2
    RESTARTING = 3
    VERIFYING = 4
    FAILED = 5
    LOCKOUT = 6


class Level(IntEnum):
    """How bad one PV is, in the order of the ALARM PV's labels."""

    NO_ALARM = 0
    MINOR = 1
    MAJOR = 2
    INVALID = 3
    DISCONNECTED = 4


ALARM_LABELS: tuple[str, ...] = tuple(level.name for level in Level)
SEVERITY_NAMES: tuple[str, ...] = ("MINOR", "MAJOR", "INVALID")
"""What the `severity` setting may say: trigger at or above this severity."""

NAMES_LIMIT = 8192
"""Characters of ``$(P)BGRSCRPT:WATCH:NAMES``: every watch name, separated by single spaces."""

LOCKOUT_WAY_OUT = "; put ENABLE 1 to clear"
"""Ends every LOCKOUT MSG: how to leave it."""

CONNECT_GRACE = 5.0
"""A PV never connected since the watch began counts as disconnected only after this."""


@dataclass(frozen=True)
class WatchPolicy:
    """How one ``[[watch]]`` entry decides: its keys other than what to watch and restart."""

    severity: int = setting(
        Level.INVALID,
        Choice({name: int(Level[name]) for name in SEVERITY_NAMES}),
        note="trigger at or above this severity",
    )
    disconnected: bool = setting(True, Flag(), note="a disconnected PV triggers too")
    delay: float = setting(
        30.0,
        Range(0.1, 86400.0, zero="at once", unit="s"),
        note="how long the condition must hold before a restart",
    )
    verify_timeout: float = setting(
        60.0,
        Range(1.0, 86400.0, unit="s"),
        note="recovered = every PV reconnected and below `severity` within this",
    )
    max_restarts: int = setting(3, Range(1, 1000), note="restarts within `window`, then LOCKOUT")
    window: float = setting(3600.0, Range(1.0, 30 * 86400.0, unit="s"), note="see `max_restarts`")
    backoff: float = setting(
        30.0,
        Range(0.1, 86400.0, zero="at once", unit="s"),
        note="the wait after a failed recovery; it doubles each time",
    )
    backoff_max: float = setting(
        900.0,
        Range(0.1, 7 * 86400.0, zero="no wait", unit="s"),
        relations=(NotBelow("backoff"),),
        note="the longest wait after a failed recovery",
    )
    connect_grace: float = CONNECT_GRACE  # not a settings key


@dataclass(frozen=True)
class Restart:
    """Send a restart now. ``manual``: asked for through the RESTART PV."""

    manual: bool
    reason: str


@dataclass(frozen=True)
class Outcome:
    """Something for the state database: ``kind`` is recovered, failed, lockout or cleared."""

    kind: str
    text: str


Action = Restart | Outcome


class WatchRefused(ValueError):
    """An operator's put that cannot be done now; the text says why."""


@dataclass
class _Pv:
    connected: bool = False
    seen: bool = False  # connected at least once since the watch began
    severity: int = 0
    value_matches: bool = False
    fresh: bool = True  # updated since the restart being verified was sent
    reason: str = ""  # while disconnected: why, in words, when the monitor knows


class WatchCore:
    """The state machine of one watch. Every method takes ``now``; none blocks."""

    def __init__(
        self,
        policy: WatchPolicy,
        pvs: Sequence[str],
        now: float,
        *,
        enabled: bool = True,
        locked_out: bool = False,
        history: Iterable[float] = (),
        failures: int = 0,
        restart_count: int = 0,
        lockout: str = "",
    ) -> None:
        """``history``: times of earlier restarts (on this clock) that count for ``window``;
        ``failures``: failed recoveries in a row so far (sets the back-off); ``lockout``:
        while ``locked_out``, the LOCKOUT's own words as recorded (why it locked out)."""
        if not pvs:
            raise ValueError("a watch needs at least one PV")
        self.policy = policy
        self.pvs: dict[str, _Pv] = {name: _Pv() for name in pvs}
        self.started = now
        self.history: list[float] = sorted(history)
        self.failures = failures
        self.restart_count = restart_count
        self.state = WatchState.OK if enabled else WatchState.DISABLED
        if enabled and locked_out:
            self.state = WatchState.LOCKOUT
        self.msg = "watching" if enabled else "disabled"
        if self.state is WatchState.LOCKOUT:
            text = lockout or f"LOCKOUT: {len(self.history)} restarts in {policy.window:g} s"
            self.msg = f"{text}{LOCKOUT_WAY_OUT}"
        self._since = now  # when the current state began
        self._retry_at = -math.inf  # FAILED: no automatic restart before this
        self._verify_until = math.inf
        self._restart_began = now
        self._need_any = False
        self._restart_what = "restart"
        self._last_failure = ""  # why the last restart failed, while failures > 0
        # The connect grace is a deadline like the others: once a tick has run at or
        # after it, it is spent and next_deadline() no longer offers it.
        self._grace_spent = False

    # ---- what the PVs say --------------------------------------------------

    def pv_level(self, name: str) -> Level:
        """How bad one watched PV is now."""
        pv = self.pvs[name]
        if not pv.connected:
            return Level.DISCONNECTED
        return Level(min(max(pv.severity, 0), int(Level.INVALID)))

    @property
    def alarm(self) -> Level:
        """The worst level of any watched PV now (DISCONNECTED worst of all)."""
        return max(self.pv_level(name) for name in self.pvs)

    def _in_grace(self, pv: _Pv, now: float) -> bool:
        return not pv.seen and now < self.started + self.policy.connect_grace

    def _triggering(self, now: float) -> list[str]:
        """Names of the PVs in the trigger condition, each with why."""
        out = []
        for name, pv in self.pvs.items():
            if not pv.connected:
                if self.policy.disconnected and not self._in_grace(pv, now):
                    out.append(f"{name} disconnected{_why(pv)}")
            elif pv.severity >= self.policy.severity:
                out.append(f"{name} {ALARM_LABELS[min(pv.severity, 3)]}")
            elif pv.value_matches:
                out.append(f"{name} has a trigger value")
        return out

    def _healthy(self) -> bool:
        """Recovered: every PV connected, below `severity`, not at a trigger value."""
        return all(
            pv.connected and pv.severity < self.policy.severity and not pv.value_matches
            for pv in self.pvs.values()
        )

    def update(
        self,
        now: float,
        name: str,
        *,
        connected: bool,
        severity: int = 0,
        value_matches: bool = False,
        reason: str = "",
    ) -> list[Action]:
        """A watched PV connected, disconnected or sent a new value/severity.

        ``reason``: why a disconnected PV is (still) not connected, in words
        ("unresponsive server at 10.1.2.3:5064"), shown in MSG with its name.
        """
        pv = self.pvs[name]
        pv.connected = connected
        pv.reason = "" if connected else reason
        pv.seen = pv.seen or connected
        pv.severity = int(severity) if connected else 0
        pv.value_matches = bool(value_matches) and connected
        pv.fresh = True
        return self.tick(now)

    def note_reason(self, now: float, name: str, reason: str) -> list[Action]:
        """Why the PV ``name``, not connected, is not: shown in MSG from now on."""
        pv = self.pvs[name]
        if pv.connected:
            return []
        pv.reason = reason
        return self.tick(now)

    # ---- time ----------------------------------------------------------------

    def tick(self, now: float) -> list[Action]:
        """Let time pass: start, finish or give up whatever is due at ``now``.

        Every deadline that :meth:`next_deadline` offered and ``now`` has reached
        is acted on here, however late: after ``tick(now)`` the next deadline is
        later than ``now``, so a caller that sleeps until it never spins.
        """
        if now >= self.started + self.policy.connect_grace:
            self._grace_spent = True
        state = self.state
        if state in (WatchState.DISABLED, WatchState.RESTARTING, WatchState.LOCKOUT):
            return []
        triggering = self._triggering(now)
        if state is WatchState.OK:
            if not triggering:
                return []
            self._enter(WatchState.PENDING, now)
            state = self.state
        if state is WatchState.PENDING:
            if not triggering:
                held = now - self._since
                self._enter(WatchState.OK, now, f"condition cleared after {held:.1f} s, no restart")
                return []
            due = self._since + self.policy.delay  # the very sum next_deadline() offers
            if now < due:
                self.msg = f"{', '.join(triggering)}; restart in {due - now:.1f} s unless it clears"
                return []
            return self._restart_or_lockout(now, ", ".join(triggering))
        if state is WatchState.VERIFYING:
            heard = [pv.fresh for pv in self.pvs.values()]
            if self._healthy() and (any(heard) if self._need_any else all(heard)):
                took = now - self._restart_began
                outcome = f"{self._restart_what}, recovered in {took:.1f} s"
                self.failures = 0
                self._enter(WatchState.OK, now, outcome)
                return [Outcome("recovered", outcome)]
            if now >= self._verify_until:
                waiting = [
                    f"{n}: {pv.reason}" if _why(pv) else n
                    for n, pv in self.pvs.items()
                    if not pv.fresh or not self._pv_ok(pv)
                ]
                why = f"not recovered within {self.policy.verify_timeout:g} s"
                if waiting:
                    why += f" ({', '.join(waiting[:3])}{' …' if len(waiting) > 3 else ''})"
                return self._fail(now, f"{self._restart_what}: {why}")
            return []
        if state is WatchState.FAILED:
            if self._healthy():
                self.failures = 0
                self._enter(WatchState.OK, now, "recovered without a further restart")
                return [Outcome("recovered", self.msg)]
            if now >= self._retry_at:
                return self._restart_or_lockout(now, ", ".join(triggering) or "still not recovered")
        return []

    def next_deadline(self) -> float:
        """When :meth:`tick` next has something to do (math.inf: only an event can).

        Never a time a tick has already passed with nothing changed: a deadline in
        the past is one that no tick has yet run at.
        """
        times = [math.inf]
        unseen = any(not pv.seen for pv in self.pvs.values())
        if (
            unseen
            and not self._grace_spent
            and self.policy.disconnected
            and self.state in (WatchState.OK, WatchState.PENDING)
        ):
            times.append(self.started + self.policy.connect_grace)
        if self.state is WatchState.PENDING:
            times.append(self._since + self.policy.delay)
        elif self.state is WatchState.VERIFYING:
            times.append(self._verify_until)
        elif self.state is WatchState.FAILED:
            times.append(self._retry_at)
        return min(times)

    # ---- operators -------------------------------------------------------------

    def set_enabled(self, now: float, enabled: bool) -> list[Action]:
        """ENABLE: Off disables; On enables and clears a LOCKOUT (and its count)."""
        if not enabled:
            if self.state is WatchState.RESTARTING:
                raise WatchRefused("a restart is under way; disable the watch once it is sent")
            self._enter(WatchState.DISABLED, now, "disabled by ENABLE Off")
            return []
        if self.state is WatchState.LOCKOUT:
            self.history.clear()
            self.failures = 0
            self._enter(WatchState.OK, now, "LOCKOUT cleared by ENABLE")
            return [Outcome("cleared", self.msg), *self.tick(now)]
        if self.state is WatchState.DISABLED:
            self._enter(WatchState.OK, now, "enabled")
            return self.tick(now)
        return []

    def manual_restart(self, now: float) -> list[Action]:
        """RESTART: restart now, by hand, through the same path (works in LOCKOUT)."""
        if self.state is WatchState.RESTARTING:
            raise WatchRefused("a restart is already under way")
        if self.state is WatchState.DISABLED:
            raise WatchRefused("the watch is disabled; put ENABLE 1 first")
        return self._begin_restart(now, "restart by hand", manual=True)

    # ---- what the runner reports ---------------------------------------------------

    def restart_sent(self, now: float, what: str, *, dry_run: bool = False) -> list[Action]:
        """The restart asked for is done (``what``: "restarted ZFCNTRL_01").

        ``dry_run``: nothing was sent; the watch verifies as usual, but nothing counts.
        """
        if self.state is not WatchState.RESTARTING:
            return []
        self._restart_what = what
        if not dry_run:
            self.restart_count += 1
            self.history.append(self._restart_began)
        self._verify_until = now + self.policy.verify_timeout
        self._enter(WatchState.VERIFYING, now, f"{what}; verifying")
        return self.tick(now)

    def restart_failed(
        self, now: float, why: str, *, dry_run: bool = False, reached: bool = True
    ) -> list[Action]:
        """The restart could not be sent or confirmed (``why`` says so, in words).

        ``reached``: False when the request reached nothing that could restart the
        IOC (a peer on a host cut off from this one): it is retried after
        ``backoff``, not growing it, and does not count towards LOCKOUT, so that a
        network partition does not lock out a watch that never touched its IOC.
        """
        if self.state is not WatchState.RESTARTING:
            return []
        # An attempt counts even when it failed: it may have killed the IOC half-way.
        if not dry_run:
            self.restart_count += 1
            if reached:
                self.history.append(self._restart_began)
        self._restart_what = why
        return self._fail(now, why, grow=reached)

    # ---- internals ----------------------------------------------------------------

    def _enter(self, state: WatchState, now: float, msg: str | None = None) -> None:
        self.state = state
        self._since = now
        if msg is not None:
            self.msg = msg

    def _in_window(self, now: float) -> int:
        self.history = [t for t in self.history if t > now - self.policy.window]
        return len(self.history)

    def _restart_or_lockout(self, now: float, reason: str) -> list[Action]:
        count = self._in_window(now)
        if count >= self.policy.max_restarts:
            # The way in and what went wrong last: the MSG a person reads to fix it.
            if self.failures and self._last_failure:
                last = f"last failure: {self._last_failure}"
            else:
                last = f"each recovery was followed by a new fault ({reason})"
            text = f"LOCKOUT: {count} restarts in {self.policy.window:g} s; {last}"
            self._enter(WatchState.LOCKOUT, now, f"{text}{LOCKOUT_WAY_OUT}")
            return [Outcome("lockout", text)]
        return self._begin_restart(now, reason, manual=False)

    def _begin_restart(self, now: float, reason: str, *, manual: bool) -> list[Action]:
        self._restart_began = now
        self._restart_what = "restart"
        # What was unhealthy must be heard from again before it counts as recovered;
        # when nothing was, any one update shows the restart took effect.
        stale = [pv for pv in self.pvs.values() if not self._pv_ok(pv)]
        self._need_any = not stale
        for pv in stale or self.pvs.values():
            pv.fresh = False
        self._enter(WatchState.RESTARTING, now, f"restarting: {reason}")
        return [Restart(manual=manual, reason=reason)]

    def _pv_ok(self, pv: _Pv) -> bool:
        return pv.connected and pv.severity < self.policy.severity and not pv.value_matches

    def _fail(self, now: float, why: str, *, grow: bool = True) -> list[Action]:
        """FAILED until ``backoff`` from now, doubled for each failure in a row
        (``grow``: this one is such a failure)."""
        doubled = self.policy.backoff * 2.0 ** (self.failures if grow else 0)
        wait = min(doubled, self.policy.backoff_max)
        if grow:
            self.failures += 1
        self._last_failure = why
        self._retry_at = now + wait
        self._enter(WatchState.FAILED, now, f"{why}; next attempt in {wait:g} s")
        return [Outcome("failed", why)]


def _why(pv: _Pv) -> str:
    """`` (why)`` for a disconnected PV whose reason is known, else nothing."""
    return f" ({pv.reason})" if pv.reason and not pv.connected else ""
