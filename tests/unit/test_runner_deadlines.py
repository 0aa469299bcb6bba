"""The runners never spin on a deadline in the past, even if a core offered one.

The cores promise that a tick moves every due deadline on (tests/unit/
test_core_deadlines.py). These tests hold the runners to their side: with the
real watch core in the configuration that once froze the IOC, the loop keeps
its beat; and with a core that breaks its promise (offers the same past
deadline for ever), the runner logs it once and looks again only now and
then, instead of holding the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from bgrscrpt_ioc.core.slot import Policy, SlotState
from bgrscrpt_ioc.core.watch import WatchPolicy, WatchState
from bgrscrpt_ioc.recovery.runner import WatchRunner
from bgrscrpt_ioc.settings import SlotSettings, WatchSettings
from bgrscrpt_ioc.state_db import StateDB
from bgrscrpt_ioc.supervisor.runner import SlotRunner
from tests.unit.fake_backend import FakeBackend

RUN_FOR = 1.0
TOO_MANY = 200  # ticks in RUN_FOR: far more than any deadline schedule asks for


class SpinDetected(Exception):
    pass


class _Monitor:
    """The watches' CA monitor, reduced to what the runner calls: nothing ever connects."""

    context = None

    def kick_searches(self) -> None:
        pass


async def _beat_gaps(duration: float) -> float:
    """The longest gap between 20 ms sleeps over ``duration``: how long the loop was held."""
    worst, last = 0.0, time.monotonic()
    end = last + duration
    while (now := time.monotonic()) < end:
        await asyncio.sleep(0.02)
        now = time.monotonic()
        worst, last = max(worst, now - last), now
    return worst


def _count_ticks(core) -> list[float]:
    """Wrap ``core.tick``: record each call; a runaway loop raises instead of hanging the test."""
    calls: list[float] = []
    real = core.tick

    def tick(now: float):
        calls.append(now)
        if len(calls) > TOO_MANY:
            raise SpinDetected(f"{len(calls)} ticks")
        return real(now)

    core.tick = tick
    return calls


def _watch_runner(tmp_path: Path, policy: WatchPolicy) -> WatchRunner:
    settings = WatchSettings(
        name="NEVER", pvs=("NOSUCH:PV",), restart=("X",), via="pv", policy=policy
    )
    db = StateDB(tmp_path / "state.sqlite")
    return WatchRunner(
        settings, prefix="T:", db=db, monitor=_Monitor(), dry_run=lambda: False,  # type: ignore[arg-type]
        backend=FakeBackend(),
    )  # fmt: skip


async def test_watch_runner_with_a_pv_that_never_connects_keeps_the_loop_free(tmp_path):
    """The reported freeze: disconnected=false, a PV that never connects."""
    runner = _watch_runner(tmp_path, WatchPolicy(disconnected=False, connect_grace=0.2))
    calls = _count_ticks(runner.core)
    runner.start()
    try:
        worst = await _beat_gaps(RUN_FOR)
        assert runner._task is not None and not runner._task.done(), runner._task
    finally:
        await runner.close()
        runner.db.close()
    assert worst < 0.25
    assert len(calls) <= 3  # the first look, perhaps one at the grace: nothing after
    assert runner.core.state is WatchState.OK


async def test_watch_runner_target_down_at_start_waits_the_delay_without_spinning(tmp_path):
    """disconnected=true, target down at start: grace, then `delay`, then one restart."""
    policy = WatchPolicy(disconnected=True, connect_grace=0.1, delay=0.6)
    runner = _watch_runner(tmp_path, policy)
    runner.dry_run = lambda: True  # decide, send nothing
    calls = _count_ticks(runner.core)
    verifying: list[float] = []
    counted = runner.core.tick

    def tick(now: float):
        if runner.core.state is WatchState.VERIFYING:
            verifying.append(now)
        return counted(now)

    runner.core.tick = tick  # type: ignore[method-assign]
    runner.start()
    try:
        worst = await _beat_gaps(RUN_FOR)
    finally:
        await runner.close()
        runner.db.close()
    assert worst < 0.25
    # Ticks until the restart: the grace, the delay (and perhaps one more); VERIFYING
    # then looks every KICK_INTERVAL on purpose, to search again for the PV.
    assert len(calls) - len(verifying) <= 3, (calls, verifying)
    assert runner.core.state in (WatchState.VERIFYING, WatchState.FAILED)
    assert "DRYRUN: would restart X" in runner.core.msg or "not recovered" in runner.core.msg


class _BrokenWatchCore:
    """A core that breaks its promise: the same deadline, in the past, for ever."""

    state = WatchState.OK
    pvs: dict = {}
    alarm = 0
    restart_count = 0
    msg = "broken"

    def __init__(self) -> None:
        self.ticks = 0

    def next_deadline(self) -> float:
        return 0.0

    def tick(self, now: float) -> list:
        self.ticks += 1
        if self.ticks > TOO_MANY:
            raise SpinDetected(f"{self.ticks} ticks")
        return []


async def test_watch_runner_guards_against_a_core_that_leaves_a_deadline_due(tmp_path, caplog):
    runner = _watch_runner(tmp_path, WatchPolicy())
    broken = _BrokenWatchCore()
    runner.core = broken  # type: ignore[assignment]
    runner.start()
    try:
        with caplog.at_level(logging.ERROR, logger="bgrscrpt_ioc.watch"):
            worst = await _beat_gaps(RUN_FOR)
        assert runner._task is not None and not runner._task.done(), runner._task
    finally:
        await runner.close()
        runner.db.close()
    assert worst < 0.25
    assert 1 <= broken.ticks <= 4  # the first tick, then one every STALE_DEADLINE_RETRY
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "left the deadline" in errors[0], errors


async def test_slot_runner_guards_against_a_core_that_leaves_a_deadline_due(tmp_path, caplog):
    script = tmp_path / "s.py"
    script.write_text("pass\n")
    db = StateDB(tmp_path / "state.sqlite")
    runner = SlotRunner(
        SlotSettings("BGRSCRPT_01", script, Policy()),
        config_dir=tmp_path,
        var_dir=tmp_path,
        prefix="T:",
        db=db,
        guardian=None,  # type: ignore[arg-type]  # nothing is spawned
        on_change=lambda: None,
    )
    ticks: list[float] = []

    def tick(now: float) -> list:
        ticks.append(now)
        if len(ticks) > TOO_MANY:
            raise SpinDetected(f"{len(ticks)} ticks")
        return []

    runner.core.next_deadline = lambda: 0.0  # type: ignore[method-assign]
    runner.core.tick = tick  # type: ignore[method-assign]
    runner.core.state = SlotState.BACKOFF
    runner.open(asyncio.get_running_loop())
    try:
        with caplog.at_level(logging.ERROR):
            runner._changed()  # schedules the (past) deadline: one tick at once
            worst = await _beat_gaps(RUN_FOR)
    finally:
        runner.close()
        db.close()
    assert worst < 0.25
    assert 1 <= len(ticks) <= 4
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and "left the deadline" in errors[0], errors
