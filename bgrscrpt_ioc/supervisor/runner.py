"""One slot at run time: carries out the core's decisions on real processes.

The runner owns no policy. Operator commands and process events go into the
core (``bgrscrpt_ioc.core.slot.Slot``); the actions that come back are carried
out here (spawn, signal the group, record the run); then the core's next
deadline is scheduled and the PV layer is told something changed.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bgrscrpt_ioc.ca.slot_pvs import SlotView
from bgrscrpt_ioc.core.slot import AutoRestart, Kill, RunEnded, Slot, SlotState, Spawn
from bgrscrpt_ioc.settings import SlotSettings
from bgrscrpt_ioc.state_db import StateDB, wall_now
from bgrscrpt_ioc.supervisor.env import kit_root, script_environment
from bgrscrpt_ioc.supervisor.guardian import Guardian
from bgrscrpt_ioc.supervisor.notify import NotifyListener
from bgrscrpt_ioc.supervisor.output import OutputCapture
from bgrscrpt_ioc.supervisor.process import ScriptProcess

log = logging.getLogger(__name__)

SETTINGS_SAVE_DELAY = 0.2
"""Seconds within which a setting put over CA reaches the state database."""

STALE_DEADLINE_RETRY = 0.5
"""A deadline a tick has already passed is a core bug: look again this much later, not at once."""


# path -> the (inode, size, mtime, ctime) of the version that last compiled cleanly.
_compiled: dict[Path, tuple[int, int, int, int]] = {}


def check_script(path: Path) -> str:
    """Why ``path`` cannot be run, or "" when it can. Cheap enough for every start:
    a file unchanged since it last compiled cleanly is not compiled again."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"no script at {path}"
    except OSError as exc:
        return f"cannot read script {path}: {exc.strerror or exc}"
    if not stat.S_ISREG(st.st_mode):
        return f"not a file: {path}"
    signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if _compiled.get(path) == signature:  # ctime: a chmod counts as a change
        return ""
    try:
        source = path.read_bytes()
    except OSError as exc:
        return f"cannot read script {path}: {exc.strerror or exc}"
    try:
        # Catches the broken script before a process is spent on it.
        compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as exc:
        return f"syntax error in {path} line {exc.lineno}: {exc.msg}"
    except ValueError as exc:  # e.g. NUL bytes
        return f"cannot compile {path}: {exc}"
    _compiled[path] = signature
    return ""


class SlotRunner:
    """Implements the PV layer's ``SlotController`` for one slot."""

    def __init__(
        self,
        settings: SlotSettings,
        *,
        config_dir: Path,
        var_dir: Path,
        prefix: str,
        db: StateDB,
        guardian: Guardian,
        on_change: Callable[[], None],
    ):
        self.settings = settings
        self.name = settings.name
        self.config_dir = config_dir
        self.var_dir = var_dir
        self.prefix = prefix
        self.db = db
        self.guardian = guardian
        self.on_change = on_change
        self.core = Slot(
            settings.name,
            settings.policy,
            autorestart=self._saved_autorestart(),
            watchdog=self._saved_watchdog(),
        )
        self.output = OutputCapture(
            var_dir / "logs" / f"{settings.name}.log",
            max_bytes=settings.log_max_bytes,
            backups=settings.log_backups,
        )
        self.notify = NotifyListener(settings.name, self._on_notify)
        self.heartbeat = 0
        self.plot_url = ""
        self.process: ScriptProcess | None = None
        self._run_id = 0
        self._timer: asyncio.TimerHandle | None = None
        self._last_tick = -math.inf  # when the core was last ticked (the guard in _schedule)
        self._stale_logged = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._exited: asyncio.Event | None = None
        self._unsaved: dict[str, str] = {}
        self._save_timer: asyncio.TimerHandle | None = None

    # ---- persisted settings ------------------------------------------------

    def _saved_autorestart(self) -> AutoRestart:
        saved = self.db.setting(self.name, "AUTORESTART")
        if saved is not None and saved.isdigit() and int(saved) in AutoRestart._value2member_map_:
            return AutoRestart(int(saved))
        return self.settings.autorestart

    def _saved_watchdog(self) -> float:
        saved = self.db.setting(self.name, "WATCHDOG")
        try:
            return float(saved) if saved is not None else self.settings.watchdog
        except ValueError:
            return self.settings.watchdog

    # ---- life ----------------------------------------------------------------

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._exited = asyncio.Event()
        self._exited.set()
        self.notify.open(loop)

    def start_if_present(self) -> None:
        """At IOC start-up: start when the script exists, else say where it was looked for."""
        problem = check_script(self.settings.script)
        if problem.startswith("no script at"):
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
            self.close()  # saves pending settings even if stopping failed

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.save_settings()
        self.notify.close()
        self.output.close()

    # ---- SlotController (called by the PV layer) ---------------------------

    def start(self) -> None:
        self._apply(self.core.start(time.monotonic()))

    def stop(self) -> None:
        self._apply(self.core.stop(time.monotonic()))

    def restart(self) -> None:
        self._apply(self.core.restart(time.monotonic()))

    def set_autorestart(self, mode: int) -> None:
        try:
            value = AutoRestart(mode)
        except ValueError:
            raise ValueError(f"AUTORESTART must be 0..{len(AutoRestart) - 1}") from None
        self.core.set_autorestart(value)
        self._persist("AUTORESTART", str(int(value)))
        self._changed()

    def set_watchdog(self, seconds: float) -> None:
        self.core.set_watchdog(seconds, time.monotonic())
        self._persist("WATCHDOG", repr(float(seconds)))
        self._changed()

    def _persist(self, key: str, value: str) -> None:
        """Save a setting within SETTINGS_SAVE_DELAY, the last value of a burst once.

        An SQLite write costs 40-60 µs of the IOC's thread; a client putting a
        setting back to back would pay it on every put. A clean shutdown saves
        what is pending (``save_settings``); only a SIGKILL within the delay
        loses a put.
        """
        self._unsaved[key] = value
        if self._loop is None:
            self.save_settings()
        elif self._save_timer is None:
            self._save_timer = self._loop.call_later(SETTINGS_SAVE_DELAY, self.save_settings)

    def save_settings(self) -> None:
        """Write the settings put since the last save (idempotent)."""
        if self._save_timer is not None:
            self._save_timer.cancel()
            self._save_timer = None
        unsaved, self._unsaved = self._unsaved, {}
        for key, value in unsaved.items():
            self.db.set_setting(self.name, key, value)

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
        )

    # ---- carrying out the core's decisions -----------------------------------

    def _apply(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                self._spawn()
            elif isinstance(action, Kill):
                if self.process is not None:
                    self.process.kill_group(action.signum)
            elif isinstance(action, RunEnded) and self._run_id:
                self.db.run_ended(self._run_id, action.exit_code, action.cause)
                self._run_id = 0
        self._changed()

    def _changed(self) -> None:
        self._schedule()
        if self.core.message:
            log.debug("%s: %s %s", self.name, self.core.state.name, self.core.message)
        self.on_change()

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.core.next_deadline()
        if deadline is None or self._loop is None:
            return
        now = time.monotonic()
        if deadline <= self._last_tick:
            # The core promises a tick moves every due deadline on; if one broke that
            # promise, a timer at once would tick again and again, burning the loop.
            if not self._stale_logged:
                self._stale_logged = True
                log.error(
                    "%s: a tick at %.3f left the deadline %.3f due (state %s); "
                    "re-checking every %g s (a bug: please report)",
                    self.name,
                    self._last_tick,
                    deadline,
                    self.core.state.name,
                    STALE_DEADLINE_RETRY,
                )
            deadline = now + STALE_DEADLINE_RETRY
        self._timer = self._loop.call_later(max(deadline - now, 0.0), self._tick)

    def _tick(self) -> None:
        self._timer = None
        self._last_tick = time.monotonic()
        self._apply(self.core.tick(self._last_tick))

    def _spawn(self) -> None:
        assert self._loop is not None
        now = time.monotonic()
        script = self.settings.script
        problem = check_script(script)
        if problem:
            self._apply(self.core.spawn_failed(problem, now))
            return
        env = script_environment(
            os.environ,
            slot=self.name,
            config_dir=self.config_dir,
            var_dir=self.var_dir,
            kit_root=kit_root(),
            notify_socket=self.notify.address,
            prefix=self.prefix,
            macros=self.settings.macros,
        )
        self.output.new_run()
        self.plot_url = ""
        try:
            process = ScriptProcess.spawn(
                [sys.executable, str(script)],
                cwd=str(self.config_dir),
                env=env,
                on_output=self._on_output,
                on_exit=self._on_exit,
                loop=self._loop,
            )
        except OSError as exc:
            self._apply(self.core.spawn_failed(f"cannot start {script}: {exc}", now))
            return
        self.process = process
        assert self._exited is not None
        self._exited.clear()
        self.guardian.add(process.pid)
        self._run_id = self.db.run_started(self.name, process.pid)
        self.output.mark(f"--- {wall_now()} {self.name}: started {script} pid {process.pid} ---")
        self._apply(self.core.spawned(process.pid, now))

    def _on_output(self, data: bytes) -> None:
        self.output.feed(data)
        self.on_change()

    def _on_exit(self, returncode: int) -> None:
        process, self.process = self.process, None
        self.plot_url = ""  # the plot was served by the run that ended
        if process is not None:
            self.guardian.remove(process.pid)
            process.close()
        summary = self.output.exception_summary
        actions = self.core.exited(returncode, time.monotonic(), summary)
        # The exit line before the actions: they may spawn the next run (RESTART, or a
        # START queued during STOPPING), whose own start line must come after it.
        self.output.mark(f"--- {wall_now()} {self.name}: {self.core.message} ---")
        log.info("%s: %s", self.name, self.core.message)
        self._apply(actions)
        if self.process is None and self._exited is not None:
            self._exited.set()

    def _on_notify(self, fields: dict[str, str]) -> None:
        if "PLOT_URL" in fields and self.process is not None:
            self.plot_url = fields["PLOT_URL"]
        self._apply(self.core.notified(fields, time.monotonic()))
