"""The life cycle of one slot: supervisord's states, systemd's restart vocabulary.

Pure code: no processes, no event loop, no clock of its own. Every entry point
takes ``now`` (a ``time.monotonic()`` reading) and returns the actions the
process adapter must carry out. The adapter reports back what happened
(``spawned``, ``spawn_failed``, ``exited``, ``notified``) and calls ``tick``
when ``next_deadline()`` has passed.
"""

from __future__ import annotations

import math
import signal
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from .setting_keys import Bad, NotBelow, Range, setting


class SlotState(IntEnum):
    """The STATUS mbbi, in the order of its enum strings (docs/pvs.md)."""

    STOPPED = 0
    STARTING = 1
    RUNNING = 2
    BACKOFF = 3
    STOPPING = 4
    EXITED = 5
    FATAL = 6


class AutoRestart(IntEnum):
    """The AUTORESTART mbbo."""

    OFF = 0
    ON_FAILURE = 1
    ALWAYS = 2

    @property
    def label(self) -> str:
        return AUTORESTART_LABELS[self]


AUTORESTART_LABELS = ("Off", "On failure", "Always")


class Cause:
    """Why a run ended, as recorded in the state database."""

    EXIT_CODE = "exit-code"
    SIGNAL = "signal"
    WATCHDOG = "watchdog"
    MEMORY = "memory"
    STOP = "stop"
    START_LIMIT = "start-limit"


WATCHDOG = Range(1.0, 86400.0, zero="off", unit="s")
"""A watchdog period in seconds, in the settings file and in a WATCHDOG put alike: a
shorter one would kill every run before it could beat once."""


def watchdog_seconds(seconds: float) -> float:
    """A watchdog period as the IOC takes it (:data:`WATCHDOG`); a ValueError says why not."""
    try:
        return float(WATCHDOG.check(seconds, float))
    except Bad:
        raise ValueError(
            f"watchdog must be 0 (off) or {WATCHDOG.low:g} to {WATCHDOG.high:g} s, not {seconds!r}"
        ) from None


@dataclass(frozen=True)
class Policy:
    """Supervision settings of a slot: keys of ``[supervisor]`` and ``[slots.BGRSCRPT_NN]``."""

    startsecs: float = setting(
        1.0, Range(0.0, 3600.0, unit="s"), note="a run must live this long to count as started"
    )
    stop_timeout: float = setting(
        10.0,
        Range(0.1, 3600.0, zero="SIGKILL at once", unit="s"),
        note="SIGTERM, then SIGKILL after this",
    )
    backoff_initial: float = setting(
        1.0,
        Range(0.1, 3600.0, zero="restart at once", unit="s"),
        note="the first restart delay; it doubles with each failure in a row",
    )
    backoff_max: float = setting(
        60.0,
        Range(0.1, 86400.0, zero="no delay", unit="s"),
        relations=(NotBelow("backoff_initial"),),
        note="the longest restart delay",
    )
    start_limit_burst: int = setting(
        5, Range(1, 1000), note="this many starts within `start_limit_interval` make it FATAL"
    )
    start_limit_interval: float = setting(
        60.0, Range(1.0, 86400.0, zero="no start limit", unit="s"), note="see `start_limit_burst`"
    )
    memory_max: float = setting(
        0.0,
        Range(1.0, 1048576.0, zero="no limit", unit="MB"),
        note="MB (MiB) of RSS for the script and everything it started",
    )


# Actions the adapter carries out, in order.
@dataclass(frozen=True)
class Spawn:
    """Start the script. Answer with ``spawned`` or ``spawn_failed``."""


@dataclass(frozen=True)
class Kill:
    """Send ``signum`` to the script's whole process group."""

    signum: int


@dataclass(frozen=True)
class RunEnded:
    """A run is over: record it. ``exit_code`` is negative for a signal."""

    cause: str
    exit_code: int


Action = Spawn | Kill | RunEnded


def describe_exit(returncode: int) -> str:
    """'exited with code 1' or 'killed by SIGKILL'."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"killed by {name}"
    return f"exited with code {returncode}"


@dataclass
class Slot:
    """One BGRSCRPT_NN slot. Read its attributes for the PVs; drive it with events."""

    name: str
    policy: Policy = field(default_factory=Policy)
    autorestart: AutoRestart = AutoRestart.ON_FAILURE
    watchdog: float = 0.0

    state: SlotState = SlotState.STOPPED
    message: str = ""
    pid: int = 0
    start_count: int = 0
    exit_code: int = 0
    registered: bool = False
    status_text: str = ""
    run_started: float | None = None
    last_beat: float = 0.0

    # Timers and intent; each is meaningful in one state only.
    _retry_at: float = 0.0  # BACKOFF: when to start again
    _kill_at: float | None = None  # STOPPING: when SIGTERM turns into SIGKILL
    _stop_cause: str = Cause.STOP  # STOPPING: what we record when it ends
    _then: str = ""  # STOPPING: "start" (operator), "restart"/"exit" (a failure), "" (stop)
    _failure: str = ""  # STOPPING for a failure: what it was ("watchdog", "memory limit …")
    _starts: deque[float] = field(default_factory=deque)
    _before_spawn: SlotState | None = None  # STARTING by an operator: where a failed spawn returns

    # ---- operator commands -------------------------------------------------

    def start(self, now: float) -> list[Action]:
        """START: run the script unless it runs already."""
        if self.state in (SlotState.STARTING, SlotState.RUNNING):
            self.message = f"START ignored: already {self.state.name.lower()} (pid {self.pid})"
            return []
        if self.state is SlotState.STOPPING:
            self._then = "start"
            self.message = "will start once stopped"
            return []
        # An operator start forgets the start-limit history (systemd's reset-failed).
        self._starts.clear()
        return self._spawn(now, manual=True)

    def stop(self, now: float) -> list[Action]:
        """STOP: stop the group; no automatic restart until the next START."""
        if self._spawn_pending():
            return self._stop_before_spawn(then="")
        if self.state in (SlotState.STARTING, SlotState.RUNNING):
            return self._begin_stop(now, Cause.STOP, then="", why="stopping")
        if self.state is SlotState.STOPPING:
            self._then = ""
            self.message = "already stopping"
            return []
        if self.state is SlotState.BACKOFF:
            self.state = SlotState.STOPPED
            self.message = "stopped (pending restart cancelled)"
            return []
        self.message = f"STOP ignored: not running ({self.state.name})"
        return []

    def restart(self, now: float) -> list[Action]:
        """RESTART: stop if running, then start."""
        if self._spawn_pending():
            return self._stop_before_spawn(then="start")
        if self.state in (SlotState.STARTING, SlotState.RUNNING):
            return self._begin_stop(now, Cause.STOP, then="start", why="restarting")
        return self.start(now)  # not running: RESTART is START

    def set_autorestart(self, mode: AutoRestart) -> None:
        self.autorestart = AutoRestart(mode)

    def set_watchdog(self, seconds: float, now: float) -> None:
        """A new watchdog period counts from now, not from the last beat."""
        if not math.isfinite(seconds) or seconds < 0:
            raise ValueError("watchdog must be a finite number of seconds >= 0")
        self.watchdog = float(seconds)
        self.last_beat = now

    # ---- reports from the process adapter ----------------------------------

    def spawned(self, pid: int, now: float) -> list[Action]:
        """The Spawn asked for has started ``pid``. In STOPPING (a STOP or RESTART came
        while the spawn was under way) the new run is stopped at once."""
        self.pid = pid
        self.run_started = now
        self.last_beat = now
        self.registered = False
        self.status_text = ""
        if self.state is SlotState.STOPPING:
            self._kill_at = now + self.policy.stop_timeout
            return [Kill(signal.SIGTERM)]
        self.message = f"started, pid {pid}"
        return []

    def spawn_failed(self, reason: str, now: float) -> list[Action]:
        """The script could not be started (missing, unreadable, syntax error, OSError).

        Nothing ran, so nothing is recorded and no restart is attempted: a script
        that cannot start now will not start in a second either. In STOPPING (a
        STOP or RESTART came while the spawn was under way; ``reason`` may be ""
        when the runner gave the spawn up for that) the slot is STOPPED, or
        starts again for a RESTART.
        """
        self.pid = 0
        self.run_started = None
        if self._starts:
            self._starts.pop()  # the start never happened
        self.start_count -= 1
        if self.state is SlotState.STOPPING:
            then, self._then = self._then, ""
            if then == "start":
                self._starts.clear()
                return self._spawn(now, manual=True)
            self.state = SlotState.STOPPED
            self.message = "stopped before it started" + (f": {reason}" if reason else "")
            return []
        # An operator's START changes nothing; an automatic restart has nowhere to go.
        self.state = self._before_spawn if self._before_spawn is not None else SlotState.FATAL
        self.message = reason if self._before_spawn is not None else f"FATAL: {reason}"
        return []

    def exited(self, returncode: int, now: float, summary: str = "") -> list[Action]:
        """The script's process has exited with ``returncode`` (-N: signal N)."""
        lived = now - self.run_started if self.run_started is not None else 0.0
        was = self.state
        self.exit_code = returncode
        self.pid = 0
        self.run_started = None
        self.registered = False
        how = describe_exit(returncode)
        what = how + (f": {summary}" if summary else "")
        actions: list[Action] = []

        if was is SlotState.STOPPING:
            cause, then = self._stop_cause, self._then
            self._then, self._kill_at = "", None
            if then == "start":
                # Says how the run ended, until the new one is spawned (the log's exit line).
                self.message = f"stopped ({what}); starting again"
                actions.append(RunEnded(cause, returncode))
                self._starts.clear()
                actions += self._spawn(now, manual=True)
                return actions
            if then == "restart":  # killed for a failure (watchdog, memory limit)
                actions += self._after_failure(now, cause, returncode, f"{self._failure}: {what}")
                return actions
            if then == "exit":  # the same, with AUTORESTART Off
                self.state = SlotState.EXITED
                self.message = f"{self._failure}: {what}"
                actions.append(RunEnded(cause, returncode))
                return actions
            self.state = SlotState.STOPPED
            self.message = f"stopped ({what})"
            actions.append(RunEnded(cause, returncode))
            return actions

        cause = Cause.SIGNAL if returncode < 0 else Cause.EXIT_CODE
        if was is SlotState.STARTING:
            # Died before startsecs: a failed start, retried whatever AUTORESTART says
            # (supervisord's startretries); the start limit ends the attempts.
            what = f"failed to start: {how} after {lived:.2f} s" + (
                f": {summary}" if summary else ""
            )
            actions += self._after_failure(now, cause, returncode, what)
            return actions
        clean = returncode == 0
        wanted = self.autorestart is AutoRestart.ALWAYS or (
            self.autorestart is AutoRestart.ON_FAILURE and not clean
        )
        if not wanted:
            self.state = SlotState.EXITED
            self.message = what
            actions.append(RunEnded(cause, returncode))
            return actions
        actions += self._after_failure(now, cause, returncode, what)
        return actions

    def notified(self, fields: dict[str, str], now: float) -> list[Action]:
        """A notify datagram from the running script (``READY=1``, ``WATCHDOG=1``, ``STATUS=…``)."""
        if self.state not in (SlotState.STARTING, SlotState.RUNNING):
            return []
        if fields.get("READY") == "1":
            self.registered = True
        if fields.get("WATCHDOG") == "1":
            self.last_beat = now
        if "STATUS" in fields:
            self.status_text = fields["STATUS"]
            self.message = fields["STATUS"]
        return []

    # ---- time --------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The next moment ``tick`` has something to do, or None."""
        if self.state is SlotState.STARTING and self.run_started is not None:
            candidates = [self.run_started + self.policy.startsecs]
            if self.watchdog > 0:
                candidates.append(self.last_beat + self.watchdog)
            return min(candidates)
        if self.state is SlotState.RUNNING and self.watchdog > 0:
            return self.last_beat + self.watchdog
        if self.state is SlotState.BACKOFF:
            return self._retry_at
        if self.state is SlotState.STOPPING:
            return self._kill_at
        return None

    def tick(self, now: float) -> list[Action]:
        """Act on whatever deadline has passed."""
        if self.state in (SlotState.STARTING, SlotState.RUNNING):
            if self.run_started is None:  # spawn not yet confirmed: no deadlines run
                return []
            if self.watchdog > 0 and now >= self.last_beat + self.watchdog:
                late = now - self.last_beat
                self._failure = "watchdog"
                return self._begin_stop(
                    now,
                    Cause.WATCHDOG,
                    then=self._then_failure(),
                    why=f"watchdog: no beat for {late:.1f} s",
                )
            if self.state is SlotState.STARTING and now >= self.run_started + self.policy.startsecs:
                self.state = SlotState.RUNNING
                self.message = f"running, pid {self.pid}"
            return []
        if self.state is SlotState.BACKOFF and now >= self._retry_at:
            if self._start_limit_hit(now):
                return self._go_fatal_start_limit()
            return self._spawn(now)
        if self.state is SlotState.STOPPING and self._kill_at is not None and now >= self._kill_at:
            self._kill_at = None
            self.message = f"did not stop within {self.policy.stop_timeout:g} s: SIGKILL"
            return [Kill(signal.SIGKILL)]
        return []

    def memory_used(self, rss_mb: float, now: float) -> list[Action]:
        """A measurement of the run's memory: the RSS of all its processes, in MB.

        Above ``policy.memory_max`` the run is killed at once (SIGKILL: it would only
        grow while it cleaned up) and that counts as a failure, like the watchdog's:
        the restart policy applies, and the start limit counts it.
        """
        limit = self.policy.memory_max
        if limit <= 0 or rss_mb <= limit or self.run_started is None:
            return []
        if self.state not in (SlotState.STARTING, SlotState.RUNNING):
            return []
        self._failure = f"memory limit {limit:g} MB exceeded (RSS {rss_mb:.0f} MB)"
        return self._begin_stop(
            now, Cause.MEMORY, then=self._then_failure(), why=self._failure, signum=signal.SIGKILL
        )

    # ---- what the PVs show -------------------------------------------------

    def healthy(self, now: float) -> bool:
        """RUNNING, and beating if the watchdog is on: HEARTBEAT counts only then."""
        if self.state is not SlotState.RUNNING:
            return False
        return self.watchdog <= 0 or now < self.last_beat + self.watchdog

    def uptime(self, now: float) -> int:
        return 0 if self.run_started is None else int(now - self.run_started)

    # ---- internals ---------------------------------------------------------

    def _spawn(self, now: float, manual: bool = False) -> list[Action]:
        # A START queued behind a STOP that then fails leaves the slot STOPPED.
        prior = SlotState.STOPPED if self.state is SlotState.STOPPING else self.state
        self._before_spawn = prior if manual else None
        self.state = SlotState.STARTING
        self._then = ""
        self.pid = 0
        self.run_started = None
        self._starts.append(now)
        self.start_count += 1
        return [Spawn()]

    def _spawn_pending(self) -> bool:
        """A Spawn was asked for and not yet answered (the runner may be checking the script)."""
        return self.state is SlotState.STARTING and self.run_started is None

    def _stop_before_spawn(self, then: str) -> list[Action]:
        """STOP/RESTART while a spawn is under way: nothing to signal yet. The answer
        (``spawned``: stop the new run at once; ``spawn_failed``: nothing ran) finishes it."""
        self.state = SlotState.STOPPING
        self._stop_cause = Cause.STOP
        self._then = then
        self._kill_at = None
        self.message = "restarting" if then else "stopping"
        return []

    def _begin_stop(
        self, now: float, cause: str, then: str, why: str, signum: int = signal.SIGTERM
    ) -> list[Action]:
        self.state = SlotState.STOPPING
        self._stop_cause = cause
        self._then = then
        self._kill_at = now + self.policy.stop_timeout
        self.message = why
        return [Kill(signum)]

    def _then_failure(self) -> str:
        """After a kill for a failure: restart as policy says, or stay EXITED."""
        return "restart" if self.autorestart is not AutoRestart.OFF else "exit"

    def _after_failure(self, now: float, cause: str, returncode: int, what: str) -> list[Action]:
        """A run ended and policy wants it back: back off, or give up at the start limit."""
        if self._start_limit_hit(now):
            self.message = what
            return [RunEnded(Cause.START_LIMIT, returncode), *self._go_fatal_start_limit()]
        delay = self.backoff_delay(now)
        self.state = SlotState.BACKOFF
        self._retry_at = now + delay
        self.message = f"{what}; restarting in {delay:g} s"
        return [RunEnded(cause, returncode)]

    def backoff_delay(self, now: float) -> float:
        """1 s, 2 s, 4 s … capped: doubles with each start still inside the start-limit window."""
        recent = sum(1 for t in self._starts if now - t < self.policy.start_limit_interval)
        exponent = max(recent - 1, 0)
        return min(self.policy.backoff_initial * 2.0**exponent, self.policy.backoff_max)

    def _start_limit_hit(self, now: float) -> bool:
        while self._starts and now - self._starts[0] >= self.policy.start_limit_interval:
            self._starts.popleft()
        return len(self._starts) >= self.policy.start_limit_burst

    def _go_fatal_start_limit(self) -> list[Action]:
        self.state = SlotState.FATAL
        last = self.message
        self.message = (
            f"FATAL: {self.policy.start_limit_burst} starts within "
            f"{self.policy.start_limit_interval:g} s"
            + (f"; last: {last}" if last else "")
            + "; put START to try again"
        )
        return []
