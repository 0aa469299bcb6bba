"""A watch searches afresh for its disconnected PVs just before a restart can fall due.

After a network outage caproto searches only every few seconds, while procServ
may answer at once: a restart falling due in that gap would hit a healthy IOC
whose PVs were about to be found again. The runner asks for a fresh search
``SEARCH_AHEAD`` seconds before such a deadline. Here the PV "comes back" only
when searched for, as a server just reachable again would answer the next search.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bgrscrpt_ioc.core.watch import WatchPolicy, WatchState
from bgrscrpt_ioc.recovery.monitor import PvUpdate
from bgrscrpt_ioc.recovery.runner import SEARCH_AHEAD, WatchRunner
from bgrscrpt_ioc.settings import WatchSettings
from bgrscrpt_ioc.state_db import StateDB
from tests.unit.fake_backend import FakeBackend

PV = "TARGET:VALUE"


class Monitor:
    """The watches' monitor as the runner sees it. While ``reachable``, a search
    finds the PV: it reports connected and healthy soon after."""

    context = None

    def __init__(self) -> None:
        self.kicks: list[float] = []
        self.reachable = False
        self.runner: WatchRunner | None = None

    def kick_searches(self) -> None:
        self.kicks.append(time.monotonic())
        if self.reachable and self.runner is not None:
            update = PvUpdate(PV, connected=True, severity=0, value=1.0)
            asyncio.get_running_loop().call_later(0.02, self.runner.on_update, update)


def make_runner(
    tmp_path: Path, policy: WatchPolicy, monitor: Monitor, restarts: list[float]
) -> WatchRunner:
    settings = WatchSettings(name="W", pvs=(PV,), restart=("X",), via="pv", policy=policy)
    runner = WatchRunner(
        settings, prefix="T:", db=StateDB(tmp_path / "state.sqlite"), monitor=monitor,  # type: ignore[arg-type]
        dry_run=lambda: False,
        backend=FakeBackend(on_call=lambda ioc: restarts.append(time.monotonic())),
    )  # fmt: skip
    monitor.runner = runner
    return runner


async def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def test_a_fresh_search_goes_out_before_a_restart_for_a_disconnected_pv(tmp_path):
    restarts: list[float] = []
    monitor = Monitor()
    policy = WatchPolicy(disconnected=True, connect_grace=0.0, delay=1.5, verify_timeout=30)
    runner = make_runner(tmp_path, policy, monitor, restarts)
    runner.start()
    try:
        await wait_for(lambda: restarts, 5, "the restart")
    finally:
        await runner.close()
        runner.db.close()
    before = [t for t in monitor.kicks if t < restarts[0]]
    assert before, "no search before the restart"
    assert restarts[0] - before[-1] <= SEARCH_AHEAD + 0.5


async def test_a_failed_watch_whose_pv_answers_the_search_ahead_does_not_restart_again(tmp_path):
    restarts: list[float] = []
    monitor = Monitor()
    policy = WatchPolicy(
        disconnected=False, connect_grace=0.0, delay=0.0, verify_timeout=0.3, backoff=2.0
    )
    runner = make_runner(tmp_path, policy, monitor, restarts)
    runner.start()
    try:
        # The PV is seen INVALID: restarted at once, never heard from again (an outage).
        runner.on_update(PvUpdate(PV, connected=True, severity=3, value=0.0))
        runner.on_update(PvUpdate(PV, connected=False))
        await wait_for(lambda: runner.core.state is WatchState.FAILED, 5, "FAILED")
        # The link returns: the next search finds the PV, and it is healthy.
        monitor.reachable = True
        await wait_for(lambda: runner.core.state is WatchState.OK, 5, "OK again")
    finally:
        await runner.close()
        runner.db.close()
    assert len(restarts) == 1
    assert runner.core.msg == "recovered without a further restart"
