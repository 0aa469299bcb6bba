"""aio.py: the deadline timer both runners wake with, and cancel_and_wait."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bgrscrpt_ioc.aio import STALE_DEADLINE_RETRY, DeadlineTimer, cancel_and_wait
from tests.unit.fake_launcher import FakeClock


def timer(clock: FakeClock, fired: list[float]) -> DeadlineTimer:
    return DeadlineTimer(
        "T", fired.append, state=lambda: "BROKEN", clock=clock, call_later=clock.call_later
    )


def test_arm_fires_once_at_the_deadline_and_replaces_what_was_armed():
    clock, fired = FakeClock(), []
    t = timer(clock, fired)
    t.arm(clock() + 5)
    t.arm(clock() + 2)  # replaces the first
    clock.advance(1.99)
    assert fired == []
    clock.advance(10)
    assert fired == [1002.0] and not t.armed
    t.arm(None)
    t.arm(float("inf"))
    assert not t.armed and clock.pending == []


def test_soon_wakes_once_for_many_asks():
    clock, fired = FakeClock(), []
    t = timer(clock, fired)
    t.arm(clock() + 5)
    for _ in range(10):
        t.soon()
    assert clock.pending == [clock()]
    clock.advance(0)
    assert fired == [1000.0]
    clock.advance(10)
    assert fired == [1000.0]  # the deadline armed before was replaced by the wake-up


def test_guard_moves_a_deadline_the_last_tick_passed_and_says_so_once(caplog):
    clock, fired = FakeClock(), []
    t = timer(clock, fired)
    assert t.guard(900.0) == 900.0  # nothing ticked yet
    t.soon()
    clock.advance(0)
    with caplog.at_level(logging.ERROR):
        for _ in range(3):
            assert t.guard(1000.0) == clock() + STALE_DEADLINE_RETRY
    assert t.guard(1000.5) == 1000.5
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1 and "T: a tick at 1000.000 left the deadline 1000.000 due" in errors[0]
    assert "(state BROKEN)" in errors[0]


def test_a_fire_that_raises_is_kept_for_its_owner():
    clock = FakeClock()

    def fire(now: float) -> None:
        raise RuntimeError("a bug")

    t = DeadlineTimer("T", fire, state=str, clock=clock, call_later=clock.call_later)
    t.soon()
    with pytest.raises(RuntimeError, match="a bug"):  # the loop would log it
        clock.advance(0)
    assert isinstance(t.failed, RuntimeError) and not t.armed


async def test_cancel_and_wait_cancels_again_when_a_cancellation_is_lost():
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed >= 3:
                    raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout=5.0)
    assert task.cancelled() and swallowed == 3


async def test_cancel_and_wait_gives_up_at_its_timeout_and_says_which(caplog):
    stop = asyncio.Event()

    async def deaf() -> None:
        while not stop.is_set():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf())
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING):
        assert not await cancel_and_wait([task], timeout=0.3, what="deaf")
    assert any("deaf: 1 task(s) did not end" in r.getMessage() for r in caplog.records)
    stop.set()
    task.cancel()
    await asyncio.wait([task])
