"""The publisher (ca/publisher.py) on a fake clock: coalescing, LOG's rate limit, the
order of sources, and that one source's failure stops neither the others nor the task.

``Publisher.run`` sleeps with a fake sleep that moves the fake clock on, so
rounds happen at exact fake times.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import replace

import pytest

from bgrscrpt_ioc.ca.publisher import PUBLISH_INTERVAL, Publisher
from bgrscrpt_ioc.ca.slot_pvs import LOG_INTERVAL, SlotPVs, SlotView
from bgrscrpt_ioc.ca.watch_pvs import WatchView, build_watch_pvs
from bgrscrpt_ioc.core.slot import SlotState
from tests.unit.fake_launcher import FakeClock


class Source:
    """A runner stand-in: its view, and every view published for it."""

    def __init__(self, view: object) -> None:
        self.current = view
        self.built = 0
        self.shown: list[object] = []
        self.fail: Exception | None = None

    def view(self, now: float) -> object:
        self.built += 1
        return replace(self.current)  # type: ignore[type-var]

    async def publish(self, view: object) -> None:
        if self.fail is not None:
            raise self.fail
        self.shown.append(view)


class NoController:
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...
    def set_autorestart(self, mode: int) -> None: ...
    def set_watchdog(self, seconds: float) -> None: ...
    def set_enabled(self, enabled: bool) -> None: ...
    def restart_now(self) -> None: ...
    def set_dry_run(self, dry_run: bool) -> None: ...


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def publisher(clock):
    async def sleep(seconds: float) -> None:
        clock.advance(seconds)
        await asyncio.sleep(0)

    pub = Publisher(clock=clock, sleep=sleep)
    yield pub


async def rounds(publisher: Publisher, count: int) -> None:
    """Run exactly ``count`` rounds of Publisher.run's loop by hand."""
    for _ in range(count):
        await publisher.publish_round()
        publisher.clock.advance(publisher.interval)  # type: ignore[attr-defined]


async def until(condition: Callable[[], bool], turns: int = 500) -> None:
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


# ---- coalescing ---------------------------------------------------------------------------


async def test_many_notices_make_one_publication_per_interval(publisher, clock):
    a = Source(SlotView())
    times: list[float] = []

    async def publish(view: object) -> None:
        times.append(clock())
        await a.publish(view)

    publisher.add("A", a.view, publish)
    changed = publisher.notifier("A")
    task = asyncio.create_task(publisher.run())
    try:
        await until(lambda: len(a.shown) == 1)  # the add itself is a change
        for i in range(100):
            a.current.heartbeat = i
            changed()
        await until(lambda: len(a.shown) == 2)
        assert a.shown[-1].heartbeat == 99  # the latest, once
        assert times[1] - times[0] >= PUBLISH_INTERVAL - 1e-9  # not before the interval had passed
        assert a.built == 2
    finally:
        task.cancel()


async def test_only_what_changed_is_published_unless_everything_is_asked_for(publisher):
    a, b = Source(SlotView()), Source(WatchView())
    publisher.add("A", a.view, a.publish)
    publisher.add("B", b.view, b.publish)
    await rounds(publisher, 1)
    assert (len(a.shown), len(b.shown)) == (1, 1)
    publisher.notifier("B")()
    await rounds(publisher, 1)
    assert (len(a.shown), len(b.shown)) == (1, 2)
    publisher.changed()  # once a second: every UPTIME
    await rounds(publisher, 1)
    assert (len(a.shown), len(b.shown)) == (2, 3)
    await rounds(publisher, 3)
    assert (len(a.shown), len(b.shown)) == (2, 3)


async def test_a_notice_before_its_source_is_added_waits_for_it(publisher):
    changed = publisher.notifier("late")
    changed()
    await rounds(publisher, 1)
    late = Source(SlotView(msg="here"))
    publisher.add("late", late.view, late.publish)
    await rounds(publisher, 1)
    assert [v.msg for v in late.shown] == ["here"]
    with pytest.raises(ValueError):
        publisher.add("late", late.view, late.publish)


async def test_a_failing_source_is_logged_and_the_others_still_published(publisher, caplog):
    a, b = Source(SlotView()), Source(SlotView())
    publisher.add("A", a.view, a.publish)
    publisher.add("B", b.view, b.publish)
    a.fail = RuntimeError("boom")
    task = asyncio.create_task(publisher.run())
    try:
        with caplog.at_level(logging.ERROR):
            await until(lambda: len(b.shown) == 1)
            a.fail = None
            publisher.changed()
            await until(lambda: len(a.shown) == 1 and len(b.shown) == 2)
        assert not task.done()
    finally:
        task.cancel()
    assert [r.getMessage() for r in caplog.records] == ["publishing A failed"]


# ---- LOG's rate limit (declared by SlotPVs, enforced here) --------------------------------------


async def test_log_shows_at_most_every_log_interval_and_the_latest_comes_later(publisher, clock):
    group = SlotPVs("P:BGRSCRPT_01:", NoController(), SlotView())
    slot = Source(SlotView(status=int(SlotState.RUNNING), pid=7, msg="running, pid 7"))
    publisher.add("BGRSCRPT_01", slot.view, group.publish, group.rate_limits)
    changed = publisher.notifier("BGRSCRPT_01")
    await rounds(publisher, 1)
    shown_at = clock()
    logs = [group.pvdb["P:BGRSCRPT_01:LOG"].value]
    for i in range(1, 20):  # a line every round, same state, PID and MSG
        slot.current.log = f"line {i}\n"
        changed()
        await rounds(publisher, 1)
        logs.append(group.pvdb["P:BGRSCRPT_01:LOG"].value)
    changes = [i for i in range(1, len(logs)) if logs[i] != logs[i - 1]]
    assert changes[0] == 1  # the first output after none goes at once
    steps = [b - a for a, b in zip(changes, changes[1:], strict=False)]
    assert all(step * PUBLISH_INTERVAL >= LOG_INTERVAL - 1e-9 for step in steps), steps
    assert len(changes) >= 3
    # The last line is shown without another notice, once its interval is over.
    for _ in range(int(LOG_INTERVAL / PUBLISH_INTERVAL) + 1):
        await rounds(publisher, 1)
    assert group.pvdb["P:BGRSCRPT_01:LOG"].value == "line 19\n"
    assert clock() > shown_at


async def test_log_comes_at_once_with_a_new_state_pid_or_msg(publisher):
    group = SlotPVs("P:BGRSCRPT_01:", NoController(), SlotView())
    slot = Source(SlotView(status=int(SlotState.RUNNING), pid=7, log="a\n"))
    publisher.add("BGRSCRPT_01", slot.view, group.publish, group.rate_limits)
    await rounds(publisher, 1)
    log_pv = group.pvdb["P:BGRSCRPT_01:LOG"]
    slot.current.log = "a\nb\n"
    publisher.changed("BGRSCRPT_01")
    await publisher.publish_round()  # within LOG_INTERVAL, same event: held
    assert log_pv.value == "a\n"
    slot.current.log = "a\nb\nZeroDivisionError: division by zero\n"
    slot.current.status = int(SlotState.BACKOFF)
    slot.current.msg = "exited with code 1: ZeroDivisionError: division by zero"
    publisher.changed("BGRSCRPT_01")
    await publisher.publish_round()  # the same instant: the traceback comes with the state
    assert log_pv.value.endswith("ZeroDivisionError: division by zero\n")
    assert group.pvdb["P:BGRSCRPT_01:STATUS"].value == "BACKOFF"


# ---- watches through the same route -----------------------------------------------------------


async def test_a_watch_is_published_through_the_same_route(publisher):
    pvs = build_watch_pvs("P:", [("ZF", NoController(), WatchView())], NoController())
    watch = Source(WatchView())
    publisher.add("watch ZF", watch.view, pvs.watches["ZF"].publish)
    await rounds(publisher, 1)
    watch.current.msg = "INVALID; restart in 30.0 s unless it clears"
    publisher.notifier("watch ZF")()
    await rounds(publisher, 1)
    assert pvs.pvdb["P:BGRSCRPT:WATCH:ZF:MSG"].value == watch.current.msg
