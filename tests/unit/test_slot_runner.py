"""SlotRunner on a fake clock with a fake spawn adapter: every action the slot core
returns (Spawn, Kill, RunEnded) carried out, and every way back into the core.

No process is started: ``FakeLauncher`` hands out runs the test drives. Time moves
only with ``FakeClock.advance``, so deadlines (startsecs, back-off, the stop
timeout, the watchdog) fire exactly when the core asks. The state database is a
real one in ``tmp_path``.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import pytest

from bgrscrpt_ioc.core.slot import AutoRestart, Cause, Policy, SlotState
from bgrscrpt_ioc.settings import SlotSettings
from bgrscrpt_ioc.state_db import StateDB
from bgrscrpt_ioc.supervisor.accounting import MB, Usage
from bgrscrpt_ioc.supervisor.runner import SlotRunner
from tests.unit.fake_launcher import FakeClock, FakeLauncher

POLICY = Policy(startsecs=1.0, stop_timeout=5.0, backoff_initial=2.0, start_limit_burst=3)


async def until(condition: Callable[[], bool], turns: int = 200) -> None:
    """Let the loop run (the check and spawn tasks, call_soon saves) until ``condition``."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


class Slot:
    """A SlotRunner with its fakes, and what it reported."""

    def __init__(self, tmp_path: Path, policy: Policy = POLICY, **settings: object):
        self.clock = FakeClock()
        self.launcher = FakeLauncher()
        self.db = StateDB(tmp_path / "state.sqlite")
        self.changes = 0
        self.runner = SlotRunner(
            SlotSettings("BGRSCRPT_01", tmp_path / "s.py", policy, **settings),  # type: ignore[arg-type]
            launcher=self.launcher,
            db=self.db,
            on_change=self._changed,
            clock=self.clock,
            call_later=self.clock.call_later,
        )
        self.runner.open(asyncio.get_running_loop())

    def _changed(self) -> None:
        self.changes += 1

    @property
    def state(self) -> SlotState:
        return self.runner.core.state

    def runs(self) -> list[dict[str, object]]:
        return self.db.runs("BGRSCRPT_01")

    async def started(self) -> None:
        """START, and wait until the (fake) run is known."""
        self.runner.start()
        await until(lambda: self.runner.process is not None)

    async def running(self) -> None:
        await self.started()
        self.clock.advance(POLICY.startsecs)
        assert self.state is SlotState.RUNNING


@pytest.fixture
async def slot(tmp_path):
    s = Slot(tmp_path)
    try:
        yield s
    finally:
        s.runner.close()
        await s.db.aclose()


# ---- Spawn ---------------------------------------------------------------------------


async def test_start_shows_starting_at_once_then_spawns_then_runs_after_startsecs(slot):
    slot.runner.start()
    assert slot.state is SlotState.STARTING and slot.changes >= 1
    await until(lambda: slot.runner.process is not None)
    run = slot.launcher.run
    assert slot.runner.core.pid == run.pid and slot.runner.view(slot.clock()).pid == run.pid
    assert slot.launcher.output.runs == 1
    assert any(f"started {slot.runner.settings.script} pid {run.pid}" in m
               for m in slot.launcher.output.marks)  # fmt: skip
    assert slot.runs()[0]["pid"] == run.pid and slot.runs()[0]["ended"] is None
    assert slot.clock.pending == [slot.clock() + POLICY.startsecs]
    slot.clock.advance(POLICY.startsecs - 0.01)
    assert slot.state is SlotState.STARTING
    slot.clock.advance(0.01)
    assert slot.state is SlotState.RUNNING
    assert slot.runner.core.message == f"running, pid {run.pid}"
    assert slot.clock.pending == []  # no watchdog: nothing more to wake for


async def test_a_failed_check_is_a_spawn_failure_and_starts_nothing(slot):
    slot.launcher.problem = "syntax error in s.py line 3: invalid syntax"
    slot.runner.start()
    await until(lambda: slot.state is not SlotState.STARTING)
    assert slot.state is SlotState.STOPPED
    assert slot.runner.core.message == "syntax error in s.py line 3: invalid syntax"
    assert slot.launcher.runs == [] and slot.runs() == []
    assert slot.runner._exited is not None and slot.runner._exited.is_set()


async def test_a_spawn_that_raises_oserror_is_a_spawn_failure(slot):
    slot.launcher.refuse = PermissionError(13, "Permission denied")
    slot.runner.start()
    await until(lambda: slot.state is not SlotState.STARTING)
    assert slot.state is SlotState.STOPPED
    assert slot.runner.core.message.endswith("Permission denied")
    assert "cannot start" in slot.runner.core.message
    assert slot.runs() == []


async def test_start_if_present_says_where_the_script_was_looked_for(tmp_path):
    s = Slot(tmp_path)
    s.launcher._missing = f"no script at {tmp_path / 's.py'}"
    try:
        s.runner.start_if_present()
        assert s.state is SlotState.STOPPED and s.runner.core.message.startswith("no script at")
        assert s.changes == 1 and s.launcher.runs == []
    finally:
        s.runner.close()
        await s.db.aclose()


# ---- Kill ------------------------------------------------------------------------------


async def test_stop_sends_sigterm_then_sigkill_at_the_stop_timeout(slot):
    await slot.running()
    run = slot.launcher.run
    slot.runner.stop()
    assert run.signals == [signal.SIGTERM] and slot.state is SlotState.STOPPING
    slot.clock.advance(POLICY.stop_timeout - 0.01)
    assert run.signals == [signal.SIGTERM]
    slot.clock.advance(0.01)
    assert run.signals == [signal.SIGTERM, signal.SIGKILL]
    assert "did not stop within 5 s" in slot.runner.core.message
    run.exits(-signal.SIGKILL)
    assert slot.state is SlotState.STOPPED and slot.runner.process is None and run.closed


async def test_the_watchdog_kills_a_run_that_stops_beating(tmp_path):
    s = Slot(tmp_path)
    try:
        s.runner.set_watchdog(10.0)
        await s.running()
        s.launcher.notify(WATCHDOG="1")
        s.clock.advance(9.0)
        s.launcher.notify(WATCHDOG="1")  # a beat moves the deadline on
        s.clock.advance(9.0)
        assert s.launcher.run.signals == []
        s.clock.advance(1.0)
        assert s.launcher.run.signals == [signal.SIGTERM]
        assert s.runner.core.message.startswith("watchdog: no beat for 10.0 s")
        await until(lambda: s.db.setting("BGRSCRPT_01", "WATCHDOG") == "10.0")
    finally:
        s.runner.close()
        await s.db.aclose()


async def test_the_memory_limit_kills_at_once(tmp_path):
    policy = Policy(startsecs=1.0, memory_max=100.0)
    s = Slot(tmp_path, policy)
    try:
        await s.started()
        s.clock.advance(1.0)
        before = s.changes
        s.runner.account(Usage(cpu_percent=5.0, rss_bytes=50 * MB, nproc=2), s.clock())
        assert s.changes == before + 1 and s.launcher.run.signals == []
        assert s.runner.view(s.clock()).rss == 50.0
        s.runner.account(Usage(cpu_percent=5.0, rss_bytes=150 * MB, nproc=2), s.clock())
        assert s.launcher.run.signals == [signal.SIGKILL]
        assert "memory limit 100 MB exceeded" in s.runner.core.message
    finally:
        s.runner.close()
        await s.db.aclose()


# ---- RunEnded ----------------------------------------------------------------------------


async def test_a_failure_is_recorded_then_restarted_after_the_backoff(slot):
    await slot.running()
    first = slot.launcher.run
    first.prints(b"Traceback (most recent call last):\nZeroDivisionError: division by zero\n")
    slot.launcher.output.exception_summary = "ZeroDivisionError: division by zero"
    first.exits(1)
    assert slot.state is SlotState.BACKOFF
    assert slot.runner.core.message == (
        "exited with code 1: ZeroDivisionError: division by zero; restarting in 2 s"
    )
    ended = slot.runs()[0]
    assert (ended["exit_code"], ended["cause"]) == (1, Cause.EXIT_CODE)
    assert ended["ended"] is not None and first.closed
    # The exit line is written before the next run's start line.
    assert "exited with code 1" in slot.launcher.output.marks[-1]
    slot.clock.advance(1.99)
    assert slot.state is SlotState.BACKOFF and len(slot.launcher.runs) == 1
    slot.clock.advance(0.01)
    assert slot.state is SlotState.STARTING
    await until(lambda: len(slot.launcher.runs) == 2)
    assert slot.runner.core.start_count == 2 and len(slot.runs()) == 2


async def test_the_start_limit_ends_fatal(slot):
    await slot.started()
    for _ in range(POLICY.start_limit_burst):
        slot.launcher.run.exits(1)  # before startsecs: a failed start
        if slot.state is not SlotState.BACKOFF:
            break
        slot.clock.advance(slot.clock.pending[0] - slot.clock())  # the end of the back-off
        await until(lambda: slot.runner.process is not None)
    assert slot.state is SlotState.FATAL
    assert len(slot.launcher.runs) == POLICY.start_limit_burst
    assert slot.runs()[0]["cause"] == Cause.START_LIMIT
    assert all(r["ended"] is not None for r in slot.runs())
    assert slot.clock.pending == []


async def test_a_clean_exit_under_on_failure_ends_exited_and_is_recorded(slot):
    await slot.running()
    slot.launcher.run.exits(0)
    assert slot.state is SlotState.EXITED
    assert (slot.runs()[0]["exit_code"], slot.runs()[0]["cause"]) == (0, Cause.EXIT_CODE)
    assert slot.clock.pending == []


# ---- the rest of the way back into the core ------------------------------------------------


async def test_notices_register_set_msg_and_plot_url(slot):
    await slot.running()
    slot.launcher.notify(READY="1", STATUS="plotting\x1b[31m 3 blocks", PLOT_URL="http://h:1/")
    view = slot.runner.view(slot.clock())
    assert view.registered and view.plot_url == "http://h:1/"
    assert "\x1b" not in view.msg and view.msg.startswith("plotting")
    slot.launcher.run.exits(0)
    assert slot.runner.view(slot.clock()).plot_url == ""  # served by the run that ended


async def test_output_reaches_log_and_says_it_changed(slot):
    await slot.running()
    before = slot.changes
    slot.launcher.run.prints(b"hello\n")
    assert slot.changes == before + 1
    assert slot.runner.view(slot.clock()).log == "hello\n"


async def test_heartbeat_and_uptime_follow_the_clock(slot):
    await slot.running()
    for _ in range(3):
        slot.clock.advance(1.0)
        slot.runner.beat(slot.clock())
    view = slot.runner.view(slot.clock())
    assert (view.heartbeat, view.uptime) == (3, 4)


async def test_settings_puts_are_kept_after_the_reply(slot):
    slot.runner.set_autorestart(int(AutoRestart.ALWAYS))
    assert slot.db.setting("BGRSCRPT_01", "AUTORESTART") is None  # not before the reply
    await until(lambda: slot.db.setting("BGRSCRPT_01", "AUTORESTART") == "2")
    with pytest.raises(ValueError):
        slot.runner.set_watchdog(0.5)


async def test_shutdown_stops_the_run_and_waits_for_its_exit(slot):
    await slot.running()
    run = slot.launcher.run
    shutdown = asyncio.create_task(slot.runner.shutdown())
    await until(lambda: run.signals == [signal.SIGTERM])
    assert not shutdown.done()
    run.exits(-signal.SIGTERM)
    await asyncio.wait_for(shutdown, 5)
    assert slot.launcher.closed and slot.runs()[0]["cause"] == Cause.STOP
