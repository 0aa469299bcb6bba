"""Carries out the watch core's decisions: one WatchRunner per ``[[watch]]``.

The runner feeds the core what the monitors hear and what operators put, sends
the restarts it asks for through the watch's restart backend (IOCs in the listed
order; :mod:`.backend`), records restarts and outcomes in the state database and shows the
watch on its PVs. It has no policy of its own.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from ..aio import DeadlineTimer, cancel_and_wait
from ..ca.watch_pvs import WatchView
from ..core.watch import Action, Outcome, Restart, WatchCore, WatchState
from ..settings import WatchSettings
from ..state_db import NOT_SENT, StateDB, wall_now
from .backend import RestartBackend, RestartError
from .monitor import PvMonitor, PvUpdate

log = logging.getLogger("bgrscrpt_ioc.watch")

KICK_INTERVAL = 0.05  # while verifying with PVs not found yet: search again this often
SEARCH_AHEAD = 1.0  # before a restart can fall due: search afresh for PVs shown disconnected
CLOSE_TIMEOUT = 5.0


class WatchRunner:
    """One watch: the core, its restarts, its PVs. Lives on the IOC's loop."""

    def __init__(
        self,
        settings: WatchSettings,
        *,
        prefix: str,
        db: StateDB,
        monitor: PvMonitor,
        dry_run: Callable[[], bool],
        backend: RestartBackend,
        clock: Callable[[], float] = time.monotonic,
    ):
        """``backend`` restarts the IOCs (built once, for this watch's ``via``).
        ``clock``: the core's clock for updates, puts and restarts; a fake one only
        for tests that do not :meth:`start` the runner (its ticks use time.monotonic)."""
        self.settings = settings
        self.name = settings.name
        self.prefix = prefix
        self.db = db
        self.monitor = monitor
        self.dry_run = dry_run
        self.backend = backend
        self.clock = clock
        self.on_change: Callable[[], None] = lambda: None  # the publisher's notice
        now, wall = clock(), time.time()
        history = db.watch_history(self.name)
        enabled = db.setting(f"watch:{self.name}", "enable") != "0"
        self.core = WatchCore(
            settings.policy,
            settings.pvs,
            now,
            enabled=enabled,
            locked_out=history.locked_out,
            # Wall times from the database onto this IOC's monotonic clock.
            history=[now - (wall - t) for t in history.recent],
            failures=history.failures,
            restart_count=history.restart_count,
            lockout=history.lockout,
        )
        self.last_restart = history.last_restart
        if history.restart_count and self.core.state is WatchState.OK:
            self.core.msg = (
                f"watching; {history.restart_count} restart(s) so far, last at {self.last_restart}"
            )
        self._restart_id = 0
        self._restart_task: asyncio.Task[None] | None = None
        self._timer = DeadlineTimer(
            f"watch {self.name}", self._tick, state=lambda: self.core.state.name, logger=log
        )
        self._started = self._closed = False
        self._ahead: asyncio.TimerHandle | None = None  # the next search ahead of a restart
        self._values = set(settings.values)

    # ---- what the PVs and operators do -------------------------------------------

    def on_update(self, update: PvUpdate) -> None:
        """A watched PV's news, from the monitor (on the loop)."""
        matches = False
        if update.connected and self._values and update.value is not None:
            matches = _value_matches(update.value, self._values)
        self._apply(
            self.core.update(
                self.clock(),
                update.name,
                connected=update.connected,
                severity=update.severity,
                value_matches=matches,
                reason=update.reason,
            )
        )

    def on_reason(self, name: str, reason: str) -> None:
        """Why a watched PV that is not connected is not, from the monitor, in words."""
        self._apply(self.core.note_reason(self.clock(), name, reason))

    def set_enabled(self, enabled: bool) -> None:
        """ENABLE put; a ValueError (WatchRefused) rejects it."""
        actions = self.core.set_enabled(self.clock(), enabled)
        self.db.set_setting(f"watch:{self.name}", "enable", "1" if enabled else "0")
        log.info("watch %s: %s", self.name, self.core.msg)
        self._apply(actions)

    def restart_now(self) -> None:
        """RESTART put: a manual restart through the same path."""
        actions = self.core.manual_restart(self.clock())
        log.info("watch %s: restart by hand", self.name)
        self._apply(actions)

    def view(self, now: float | None = None) -> WatchView:
        """What the watch's PVs show (``now`` is unused: a watch shows no durations)."""
        return WatchView(
            state=int(self.core.state),
            alarm=int(self.core.alarm),
            enable=self.core.state is not WatchState.DISABLED,
            restart_cnt=self.core.restart_count,
            last_restart=self.last_restart,
            msg=self.core.msg,
        )

    # ---- life ------------------------------------------------------------------

    @property
    def running(self) -> bool:
        """Started, not closed, and no tick has raised (which would have stopped it)."""
        return self._started and not self._closed and self._timer.failed is None

    def start(self) -> None:
        self._started = True
        self._schedule()

    async def close(self) -> None:
        """Stop the watch; a restart under way is cut short (recorded as interrupted)."""
        self._closed = True
        self._timer.cancel()
        if self._ahead is not None:
            self._ahead.cancel()
        if self._restart_task is not None:
            await cancel_and_wait(
                [self._restart_task], CLOSE_TIMEOUT, what=f"watch {self.name}", logger=log
            )

    def _tick(self, now: float) -> None:
        """The deadline is due, or something happened: tick the core, look again later."""
        self._apply(self.core.tick(now), wake=False)
        self._schedule()
        self.on_change()

    def _schedule(self) -> None:
        """Arm the timer for the core's next deadline, searching again meanwhile as asked."""
        if self._closed:
            return
        now = time.monotonic()
        wait = self._timer.guard(self.core.next_deadline()) - now
        kicking = self.core.state is WatchState.VERIFYING and any(
            not pv.connected for pv in self.core.pvs.values()
        )
        if kicking:
            self.monitor.kick_searches()
            wait = min(wait, KICK_INTERVAL)
        self._search_ahead(wait)
        self._timer.arm(now + wait)

    def _search_ahead(self, wait: float) -> None:
        """A restart may fall due in ``wait`` s: search afresh for the PVs shown
        disconnected a little before, so that it is decided on what they show then.

        After a network outage caproto searches only every few seconds, and
        procServ may answer before the PVs do: without this, a healthy IOC whose
        PVs were about to be found again would be restarted. A timer, not a tick,
        so that the core is looked at no more often than its deadlines ask.
        """
        if self._ahead is not None:
            self._ahead.cancel()
            self._ahead = None
        if self.core.state not in (WatchState.PENDING, WatchState.FAILED) or math.isinf(wait):
            return
        if all(pv.connected for pv in self.core.pvs.values()):
            return
        self._ahead = asyncio.get_running_loop().call_later(
            max(0.0, wait - SEARCH_AHEAD), self.monitor.kick_searches
        )

    def _apply(self, actions: list[Action], *, wake: bool = True) -> None:
        for action in actions:
            if isinstance(action, Restart):
                self._restart_task = asyncio.create_task(self._restart(action))
            elif isinstance(action, Outcome):
                self._record(action)
        if wake and self._started and not self._closed:
            self._timer.soon()  # tick at the loop's next turn, then publish

    def _record(self, outcome: Outcome) -> None:
        log.log(
            logging.WARNING if outcome.kind in ("failed", "lockout") else logging.INFO,
            "watch %s: %s: %s",
            self.name,
            outcome.kind,
            outcome.text,
        )
        try:
            if outcome.kind in ("recovered", "failed") and self._restart_id:
                self.db.watch_restart_outcome(self._restart_id, outcome.kind, outcome.text)
                if outcome.kind == "recovered":
                    self._restart_id = 0
            self.db.watch_event(self.name, outcome.kind, outcome.text)
        except Exception:  # a full disk must not stop the watch
            log.exception("watch %s: cannot record %s", self.name, outcome.kind)

    # ---- restarts ----------------------------------------------------------------

    async def _restart(self, action: Restart) -> None:
        iocs = list(self.settings.restart)
        how = self.backend.via
        if self.dry_run():
            what = f"DRYRUN: would restart {', '.join(iocs)} via {how} ({action.reason})"
            log.warning("watch %s: %s", self.name, what)
            self.db.watch_event(self.name, "dry-run", what)
            self._apply(self.core.restart_sent(self.clock(), what, dry_run=True))
            return
        log.warning("watch %s: restarting %s via %s: %s", self.name, iocs, how, action.reason)
        self._restart_id = self.db.watch_restart_began(self.name, iocs, manual=action.manual)
        self.last_restart = wall_now()
        done: list[str] = []
        try:
            for ioc in iocs:
                shown = await self.backend.restart(ioc)
                log.info("watch %s: %s", self.name, shown)
                done.append(self.backend.label(ioc))
        except RestartError as exc:
            why = str(exc) if not done else f"restarted {', '.join(done)}, then: {exc}"
            self._failed(why, reached=exc.reached or bool(done))
            return
        except asyncio.CancelledError:
            self.db.watch_restart_outcome(self._restart_id, "interrupted", "the IOC stopped")
            raise
        except Exception as exc:  # a bug here must leave the watch FAILED, not stuck
            log.exception("watch %s: restart failed", self.name)
            self._failed(f"restart failed: {type(exc).__name__}: {exc}")
            return
        what = f"restarted {', '.join(done)}"
        self.db.watch_restart_outcome(self._restart_id, "sent", what)
        self._apply(self.core.restart_sent(self.clock(), what))

    def _failed(self, why: str, *, reached: bool = True) -> None:
        if not reached and self._restart_id:
            # Recorded as such, so that it does not count towards LOCKOUT after a
            # restart of this IOC either (see StateDB.watch_history).
            try:
                self.db.watch_restart_outcome(self._restart_id, NOT_SENT, why)
            except Exception:  # a full disk must not stop the watch
                log.exception("watch %s: cannot record the failed restart", self.name)
            self._restart_id = 0
        self._apply(self.core.restart_failed(self.clock(), why, reached=reached))


def _value_matches(value: object, wanted: set[str | int | float]) -> bool:
    if isinstance(value, str):
        return value.strip() in wanted
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return any(not isinstance(w, str) and float(w) == number for w in wanted)
