"""The watch runner's restart path, on a fake clock and a fake restart backend.

Each test drives one restart through ``WatchRunner`` (the core, the backend, the
state database: a real SQLite file) and checks what the watch shows (STATE, MSG,
RESTART_CNT) and what the state database keeps, for every way a restart ends.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bgrscrpt_ioc.core.watch import WatchPolicy, WatchState
from bgrscrpt_ioc.recovery.backend import RestartError
from bgrscrpt_ioc.recovery.monitor import PvUpdate
from bgrscrpt_ioc.recovery.runner import WatchRunner
from bgrscrpt_ioc.settings import WatchSettings
from bgrscrpt_ioc.state_db import StateDB
from tests.unit.fake_backend import FakeBackend

PV = "T:DEV:VALUE"


class Clock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Monitor:
    """The watches' CA monitor, reduced to what the runner calls."""

    context = None

    def kick_searches(self) -> None:
        pass


class Watch:
    """A runner with its fakes, not started: restarts are driven by hand."""

    def __init__(self, tmp_path: Path, backend: FakeBackend, *, dry_run: bool = False,
                 policy: WatchPolicy | None = None):  # fmt: skip
        self.clock = Clock()
        self.backend = backend
        self.db = StateDB(tmp_path / "state.sqlite")
        self.dry = dry_run
        settings = WatchSettings(
            name="W", pvs=(PV,), restart=("A", "B"), policy=policy or WatchPolicy()
        )
        self.runner = WatchRunner(
            settings, prefix="T:", db=self.db, monitor=Monitor(),  # type: ignore[arg-type]
            dry_run=lambda: self.dry, backend=backend, clock=self.clock,
        )  # fmt: skip

    async def restart_by_hand(self) -> None:
        self.runner.restart_now()
        task = self.runner._restart_task
        assert task is not None
        await task

    def restarts(self) -> list[dict[str, object]]:
        return self.db.watch_restarts("W")


@pytest.fixture
def make(tmp_path):
    made: list[Watch] = []

    def build(backend: FakeBackend, **kw) -> Watch:
        watch = Watch(tmp_path, backend, **kw)
        made.append(watch)
        return watch

    yield build
    for watch in made:
        watch.db.close()


async def test_a_restart_sent_to_every_ioc_in_order_goes_on_to_verify(make):
    watch = make(FakeBackend())
    watch.clock.now = 1234.0
    await watch.restart_by_hand()
    core = watch.runner.core
    assert watch.backend.calls == ["A", "B"]
    assert core.state is WatchState.VERIFYING
    assert core.msg == "restarted A (fake), B (fake); verifying"
    assert core.restart_count == 1
    assert core.next_deadline() == 1234.0 + core.policy.verify_timeout  # on the fake clock
    (row,) = watch.restarts()
    assert (row["iocs"], row["manual"], row["outcome"]) == ("A B", 1, "sent")
    assert row["detail"] == "restarted A (fake), B (fake)"
    assert watch.runner.last_restart


async def test_a_restart_the_backend_cannot_send_fails_with_its_words(make):
    watch = make(FakeBackend({"A": RestartError("procServ at 127.0.0.1:1 refused the connection")}))
    watch.clock.now = 50.0
    await watch.restart_by_hand()
    core = watch.runner.core
    assert watch.backend.calls == ["A"]  # B is not tried after A failed
    assert core.state is WatchState.FAILED
    assert core.msg == "procServ at 127.0.0.1:1 refused the connection; next attempt in 30 s"
    assert core.next_deadline() == 50.0 + 30.0
    assert core.restart_count == 1  # an attempt counts: it may have killed A half-way
    (row,) = watch.restarts()
    assert (row["outcome"], row["detail"]) == (
        "failed",
        "procServ at 127.0.0.1:1 refused the connection",
    )


async def test_a_restart_that_fails_after_the_first_ioc_says_what_was_restarted(make):
    watch = make(FakeBackend({"B": RestartError("B: STATUS did not return to Running")}))
    await watch.restart_by_hand()
    core = watch.runner.core
    assert watch.backend.calls == ["A", "B"]
    assert core.state is WatchState.FAILED
    assert core.msg.startswith("restarted A (fake), then: B: STATUS did not return to Running;")
    (row,) = watch.restarts()
    assert row["outcome"] == "failed"
    assert row["detail"] == "restarted A (fake), then: B: STATUS did not return to Running"


async def test_dry_run_decides_but_sends_nothing_and_counts_nothing(make):
    watch = make(FakeBackend(), dry_run=True)
    await watch.restart_by_hand()
    core = watch.runner.core
    assert watch.backend.calls == []
    assert core.state is WatchState.VERIFYING
    assert core.msg == "DRYRUN: would restart A, B via fake (restart by hand); verifying"
    assert core.restart_count == 0
    assert watch.restarts() == []


async def test_a_restart_cut_short_by_shutdown_is_recorded_interrupted(make):
    watch = make(FakeBackend({"A": FakeBackend.HANG}))
    watch.runner.restart_now()
    async with asyncio.timeout(5):
        await watch.backend.entered.wait()
    assert watch.runner.core.state is WatchState.RESTARTING
    await watch.runner.close()
    task = watch.runner._restart_task
    assert task is not None and task.cancelled()
    (row,) = watch.restarts()
    assert (row["outcome"], row["detail"]) == ("interrupted", "the IOC stopped")


async def test_a_bug_in_the_backend_leaves_the_watch_failed_not_stuck(make, caplog):
    watch = make(FakeBackend({"A": KeyError("no such endpoint")}))
    with caplog.at_level(logging.ERROR, logger="bgrscrpt_ioc.watch"):
        await watch.restart_by_hand()
    core = watch.runner.core
    assert core.state is WatchState.FAILED
    assert core.msg.startswith("restart failed: KeyError: 'no such endpoint'; next attempt in")
    assert any(r.exc_info for r in caplog.records), "a bug keeps its traceback in the log"
    (row,) = watch.restarts()
    assert row["outcome"] == "failed"


async def test_an_automatic_restart_is_recorded_as_not_by_hand(make):
    watch = make(FakeBackend(), policy=WatchPolicy(delay=0.0))
    watch.runner.on_update(PvUpdate(PV, connected=True, severity=3, value=1.0))
    task = watch.runner._restart_task
    assert task is not None
    await task
    assert watch.runner.core.state is WatchState.VERIFYING
    (row,) = watch.restarts()
    assert (row["manual"], row["outcome"]) == (0, "sent")
    # The new IOC's first healthy value is the recovery, on the fake clock.
    watch.clock.now += 2.5
    watch.runner.on_update(PvUpdate(PV, connected=True, severity=0, value=1.0))
    assert watch.runner.core.state is WatchState.OK
    assert watch.runner.core.msg == "restarted A (fake), B (fake), recovered in 2.5 s"
    assert watch.restarts()[0]["outcome"] == "recovered"


async def test_a_restart_by_hand_while_one_is_under_way_is_refused(make):
    watch = make(FakeBackend({"A": FakeBackend.HANG}))
    watch.runner.restart_now()
    async with asyncio.timeout(5):
        await watch.backend.entered.wait()
    with pytest.raises(ValueError, match="already under way"):
        watch.runner.restart_now()
    assert watch.backend.calls == ["A"]
    await watch.runner.close()
