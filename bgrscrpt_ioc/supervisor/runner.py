"""One slot at run time: carries out the core's decisions on real processes.

The runner owns no policy. Operator commands and process events go into the
core (``bgrscrpt_ioc.core.slot.Slot``); the actions that come back are carried
out here (spawn, signal the group, record the run); then the core's next
deadline is scheduled and the PV layer is told something changed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from bgrscrpt_ioc.aio import CallLater, DeadlineTimer
from bgrscrpt_ioc.ca.slot_pvs import SlotView
from bgrscrpt_ioc.core.slot import (
    AutoRestart,
    Kill,
    RunEnded,
    Slot,
    SlotState,
    Spawn,
    watchdog_seconds,
)
from bgrscrpt_ioc.settings import SlotSettings
from bgrscrpt_ioc.state_db import StateDB, wall_now
from bgrscrpt_ioc.supervisor.accounting import Usage
from bgrscrpt_ioc.supervisor.launcher import Launcher, Run
from bgrscrpt_ioc.supervisor.terminal import printable

log = logging.getLogger(__name__)


class SlotRunner:
    """Implements the PV layer's ``SlotController`` for one slot."""

    def __init__(
        self,
        settings: SlotSettings,
        *,
        launcher: Launcher,
        db: StateDB,
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
        call_later: CallLater | None = None,
    ):
        """``launcher`` starts the runs (``launcher.ScriptLauncher``, or a fake);
        ``on_change`` is the publisher's notice; ``clock`` and ``call_later`` are a
        fake clock's in tests (default: monotonic time and the loop's timers)."""
        self.settings = settings
        self.name = settings.name
        self.launcher = launcher
        self.output = launcher.output
        self.db = db
        self.on_change = on_change
        self.clock = clock
        self.core = Slot(
            settings.name,
            settings.policy,
            autorestart=self._saved_autorestart(),
            watchdog=self._saved_watchdog(),
        )
        self.heartbeat = 0
        self.plot_url = ""
        self.process: Run | None = None
        self._run_id = 0
        self._timer = DeadlineTimer(
            self.name,
            self._tick,
            state=lambda: self.core.state.name,
            logger=log,
            clock=clock,
            call_later=call_later,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: asyncio.Event | None = None
        # A Spawn under way: the script check, then the keeper starting it.
        self._checking: asyncio.Task[None] | None = None
        self.usage = Usage()

    # ---- persisted settings ------------------------------------------------

    def _saved_autorestart(self) -> AutoRestart:
        saved = self.db.setting(self.name, "AUTORESTART")
        if saved is None:
            return self.settings.autorestart
        if saved.isdigit() and int(saved) in AutoRestart._value2member_map_:
            return AutoRestart(int(saved))
        # saved by an older version, or edited by hand
        log.warning(
            "%s: ignoring the saved AUTORESTART %r: must be 0 to %d",
            self.name,
            saved,
            len(AutoRestart) - 1,
        )
        return self.settings.autorestart

    def _saved_watchdog(self) -> float:
        saved = self.db.setting(self.name, "WATCHDOG")
        if saved is None:
            return self.settings.watchdog
        try:
            return watchdog_seconds(float(saved))
        except ValueError as exc:  # saved by an older version, or edited by hand
            log.warning("%s: ignoring the saved WATCHDOG %r: %s", self.name, saved, exc)
            return self.settings.watchdog

    # ---- life ----------------------------------------------------------------

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._exited = asyncio.Event()
        self._exited.set()
        self.launcher.open(loop, self._on_notify)

    def start_if_present(self) -> None:
        """At IOC start-up: start when the script exists, else say where it was looked for."""
        problem = self.launcher.missing()
        if problem:
            self.core.message = problem
            self.on_change()
        else:
            self.start()

    async def shutdown(self) -> None:
        """Stop the script's group (SIGTERM, SIGKILL after the stop timeout) and wait for it."""
        active = (SlotState.STARTING, SlotState.RUNNING, SlotState.STOPPING, SlotState.BACKOFF)
        try:
            if self.core.state in active:
                self.stop()
            assert self._exited is not None
            await self._exited.wait()
        finally:
            self.close()

    def close(self) -> None:
        self._timer.cancel()
        if self._checking is not None:
            self._give_up_check("the IOC is stopping")
        self.launcher.close()

    # ---- SlotController (called by the PV layer) ---------------------------

    def start(self) -> None:
        self._apply(self.core.start(self.clock()))

    def stop(self) -> None:
        self._apply(self.core.stop(self.clock()))
        if self._checking is not None and self.core.state is SlotState.STOPPING:
            self._give_up_check("")  # nothing to wait for: it has not started

    def restart(self) -> None:
        self._apply(self.core.restart(self.clock()))

    def set_autorestart(self, mode: int) -> None:
        try:
            value = AutoRestart(mode)
        except ValueError:
            raise ValueError(f"AUTORESTART must be 0..{len(AutoRestart) - 1}") from None
        self.core.set_autorestart(value)
        self._after_reply("AUTORESTART", str(int(value)))

    def set_watchdog(self, seconds: float) -> None:
        """WATCHDOG put: 0 (off) or ``core.slot.WATCHDOG``'s range; a ValueError rejects it."""
        seconds = watchdog_seconds(seconds)
        self.core.set_watchdog(seconds, self.clock())
        self._after_reply("WATCHDOG", repr(float(seconds)))

    def _after_reply(self, key: str, value: str) -> None:
        """What a setting put leaves to do once its reply has gone out: keep the setting
        (in memory, and in the file as soon as it can be written: the state database
        retries, and says so on BGRSCRPT:MSG, until it is), re-arm the deadlines and
        tell the PVs.

        The core has the new setting already. Saving (SQLite, and waking the writer's
        thread) before the reply added 0.1 ms to every put's round trip, measured
        against EPICS base; re-arming and the notice added some 10 µs more. Puts are
        dealt with in the order they came (``call_soon`` runs its callbacks in order)."""
        if self._loop is not None:
            self._loop.call_soon(self._setting_done, key, value)
        else:
            self._setting_done(key, value)

    def _setting_done(self, key: str, value: str) -> None:
        self._save(key, value)
        self._changed()

    def _save(self, key: str, value: str) -> None:
        try:
            self.db.set_setting(self.name, key, value)
        except Exception:  # a bug: the put has taken effect; say loudly it is not kept
            log.exception("%s: %s = %s cannot be kept in the state database", self.name, key, value)

    # ---- what the PVs show ---------------------------------------------------

    def beat(self, now: float) -> None:
        """Called once a second: HEARTBEAT counts only while the script is healthy."""
        if self.core.healthy(now):
            self.heartbeat += 1

    def view(self, now: float) -> SlotView:
        core = self.core
        return SlotView(
            status=int(core.state),
            heartbeat=self.heartbeat,
            pid=core.pid,
            start_cnt=core.start_count,
            exit_code=core.exit_code,
            uptime=core.uptime(now),
            registered=core.registered,
            autorestart=int(core.autorestart),
            watchdog=core.watchdog,
            script=str(self.settings.script),
            msg=core.message,
            log=self.output.tail,
            plot_url=self.plot_url,
            cpu=round(self.usage.cpu_percent, 1),
            rss=round(self.usage.rss_mb, 1),
            nproc=self.usage.nproc,
            memory_max=self.settings.policy.memory_max,
        )

    # ---- resources -------------------------------------------------------------

    def leader(self) -> int | None:
        """The pid of the running script, None when none runs."""
        return self.process.pid if self.process is not None else None

    def account(self, usage: Usage, now: float) -> None:
        """A measurement of the slot's processes (about every 2 s): shown, and held
        against the memory limit."""
        changed = usage != self.usage
        self.usage = usage
        actions = self.core.memory_used(usage.rss_mb, now)
        if actions:
            log.warning("%s: %s", self.name, self.core.message)
            self._apply(actions)
        elif changed:
            self.on_change()

    # ---- carrying out the core's decisions -----------------------------------

    def _apply(self, actions: list) -> None:
        """Carry out every action, in order: one that fails never skips the next."""
        for action in actions:
            try:
                if isinstance(action, Spawn):
                    self._spawn()
                elif isinstance(action, Kill):
                    if self.process is not None:
                        self.process.signal_all(action.signum)
                elif isinstance(action, RunEnded) and self._run_id:
                    run_id, self._run_id = self._run_id, 0
                    self.db.run_ended(run_id, action.exit_code, action.cause)
            except Exception:  # a bug: log it, and go on with the core's other decisions
                log.exception("%s: carrying out %s failed", self.name, action)
        self._changed()

    def _changed(self) -> None:
        self._schedule()
        if self.core.message:
            log.debug("%s: %s %s", self.name, self.core.state.name, self.core.message)
        self.on_change()

    def _schedule(self) -> None:
        deadline = self.core.next_deadline()
        if self._loop is None:
            return
        self._timer.arm(None if deadline is None else self._timer.guard(deadline))

    def _tick(self, now: float) -> None:
        self._apply(self.core.tick(now))

    def _spawn(self) -> None:
        """The core asked for a run: check the script off the loop, then have the keeper
        start it, the loop running on meanwhile.

        The slot shows STARTING at once; a script that cannot run lands as a spawn
        failure, as before. A STOP during the check gives the spawn up; one while the
        keeper starts it is the core's to settle once the pid is known.
        """
        assert self._loop is not None and self._exited is not None
        self._exited.clear()  # a shutdown waits for the check's outcome too
        self._checking = self._loop.create_task(self._check_then_spawn())

    def _give_up_check(self, why: str) -> None:
        """Cancel the check under way and settle the spawn here: a task cancelled before it
        ever ran would not get the chance (its body never starts)."""
        task, self._checking = self._checking, None
        if task is not None:
            task.cancel()
            self._spawn_failed(why)

    async def _check_then_spawn(self) -> None:
        script = self.settings.script
        try:
            problem = await self.launcher.check()
        except asyncio.CancelledError:  # given up (_give_up_check), which settled the spawn
            raise
        except Exception as exc:  # a bug in the check must not leave the slot STARTING
            log.exception("%s: checking %s failed", self.name, script)
            problem = f"cannot check {script}: {type(exc).__name__}: {exc}"
        if problem:
            self._checking = None
            self._spawn_failed(problem)
        elif self.core.state is SlotState.STOPPING:
            self._checking = None
            self._spawn_failed("")  # restarted while it was being checked: check again
        else:
            await self._spawn_now()

    def _spawn_failed(self, problem: str) -> None:
        try:
            self._apply(self.core.spawn_failed(problem, self.clock()))
        finally:
            if self.process is None and self._checking is None and self._exited is not None:
                self._exited.set()

    async def _spawn_now(self) -> None:
        script = self.settings.script
        self.output.new_run()
        self.plot_url = ""
        try:
            # Cancelled here (_give_up_check), the keeper's run, if any, is killed.
            process = await self.launcher.spawn(self._on_output, self._on_exit)
        except OSError as exc:
            self._checking = None
            self._spawn_failed(f"cannot start {script}: {exc.strerror or exc}")
            return
        now = self.clock()
        self._checking = None
        self.process = process
        try:
            self._run_id = self.db.run_started(self.name, process.pid)
        except Exception:  # a bug: the run goes on unrecorded rather than unsupervised
            log.exception("%s: cannot record the run of pid %d", self.name, process.pid)
        self.output.mark(f"--- {wall_now()} {self.name}: started {script} pid {process.pid} ---")
        self._apply(self.core.spawned(process.pid, now))

    def _on_output(self, data: bytes) -> None:
        self.output.feed(data)
        self.on_change()

    def _on_exit(self, returncode: int) -> None:
        process, self.process = self.process, None
        self.plot_url = ""  # the plot was served by the run that ended
        if process is not None:
            process.close()
        try:
            summary = self.output.exception_summary
            actions = self.core.exited(returncode, self.clock(), summary)
            # The exit line before the actions: they may spawn the next run (RESTART, or a
            # START queued during STOPPING), whose own start line must come after it.
            self.output.mark(f"--- {wall_now()} {self.name}: {self.core.message} ---")
            log.info("%s: %s", self.name, self.core.message)
            self._apply(actions)
        finally:
            # Whatever failed above, a shutdown waiting for this exit must hear of it.
            if self.process is None and self._checking is None and self._exited is not None:
                self._exited.set()

    def _on_notify(self, fields: dict[str, str]) -> None:
        if "STATUS" in fields:  # goes to MSG: text for C clients, as LOG is
            fields["STATUS"] = printable(fields["STATUS"])
        if "PLOT_URL" in fields and self.process is not None:
            self.plot_url = fields["PLOT_URL"]
        self._apply(self.core.notified(fields, self.clock()))
