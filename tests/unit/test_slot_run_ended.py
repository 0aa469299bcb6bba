"""The slot core: the cause and exit code recorded for every way a run ends.

A fake monotonic clock and the tests as the process adapter: see slot_helpers.
"""

from __future__ import annotations

from collections.abc import Callable
from signal import SIGKILL, SIGTERM

import pytest

from bgrscrpt_ioc.core.slot import (
    Action,
    Kill,
    Policy,
    RunEnded,
    Slot,
    SlotState,
    Spawn,
)
from tests.unit.slot_helpers import (
    AR,
    T0,
    S,
    launch,
    launch_running,
    new_slot,
    slot_in,
)

# ---------------------------------------------------------------------------
# RunEnded: the right cause and exit code for every way a run ends
# ---------------------------------------------------------------------------


def _clean_exit_not_restarted(slot: Slot) -> list[Action]:
    launch_running(slot)
    return slot.exited(0, T0 + 5)


def _failing_exit_restarted(slot: Slot) -> list[Action]:
    launch_running(slot)
    return slot.exited(1, T0 + 5)


def _signal_exit(slot: Slot) -> list[Action]:
    launch_running(slot)
    return slot.exited(-11, T0 + 5)


def _failed_start(slot: Slot) -> list[Action]:
    launch(slot)
    return slot.exited(2, T0 + 0.5)


def _operator_stop(slot: Slot) -> list[Action]:
    launch_running(slot)
    assert slot.stop(T0 + 5) == [Kill(SIGTERM)]
    return slot.exited(-15, T0 + 5.5)


def _operator_stop_clean(slot: Slot) -> list[Action]:
    launch_running(slot)
    slot.stop(T0 + 5)
    return slot.exited(0, T0 + 5.5)


def _operator_stop_sigkill(slot: Slot) -> list[Action]:
    launch_running(slot)
    slot.stop(T0 + 5)
    assert slot.tick(T0 + 15) == [Kill(SIGKILL)]
    return slot.exited(-9, T0 + 15.1)


def _operator_restart(slot: Slot) -> list[Action]:
    launch_running(slot)
    slot.restart(T0 + 5)
    return slot.exited(-15, T0 + 5.5)


def _watchdog(slot: Slot) -> list[Action]:
    slot.watchdog = 3.0
    launch_running(slot)
    assert slot.tick(T0 + 4) == [Kill(SIGTERM)]
    return slot.exited(-15, T0 + 4.5)


def _watchdog_sigkill(slot: Slot) -> list[Action]:
    slot.watchdog = 3.0
    launch_running(slot)
    slot.tick(T0 + 4)
    assert slot.tick(T0 + 14) == [Kill(SIGKILL)]
    return slot.exited(-9, T0 + 14.1)


def _watchdog_autorestart_off(slot: Slot) -> list[Action]:
    slot.autorestart = AR.OFF
    return _watchdog(slot)


def _start_limit(slot: Slot) -> list[Action]:
    slot.policy = Policy(start_limit_burst=1)
    launch(slot)
    return slot.exited(1, T0 + 0.5)


RUN_ENDINGS: list[tuple[Callable[[Slot], list[Action]], list[Action], SlotState]] = [
    (_clean_exit_not_restarted, [RunEnded("exit-code", 0)], S.EXITED),
    (_failing_exit_restarted, [RunEnded("exit-code", 1)], S.BACKOFF),
    (_signal_exit, [RunEnded("signal", -11)], S.BACKOFF),
    (_failed_start, [RunEnded("exit-code", 2)], S.BACKOFF),
    (_operator_stop, [RunEnded("stop", -15)], S.STOPPED),
    (_operator_stop_clean, [RunEnded("stop", 0)], S.STOPPED),
    (_operator_stop_sigkill, [RunEnded("stop", -9)], S.STOPPED),
    (_operator_restart, [RunEnded("stop", -15), Spawn()], S.STARTING),
    (_watchdog, [RunEnded("watchdog", -15)], S.BACKOFF),
    (_watchdog_sigkill, [RunEnded("watchdog", -9)], S.BACKOFF),
    (_watchdog_autorestart_off, [RunEnded("watchdog", -15)], S.EXITED),
    (_start_limit, [RunEnded("start-limit", 1)], S.FATAL),
]


@pytest.mark.parametrize(
    ("scenario", "actions", "state"),
    RUN_ENDINGS,
    ids=[f.__name__.strip("_") for f, *_ in RUN_ENDINGS],
)
def test_run_ended_for_every_way_a_run_ends(
    scenario: Callable[[Slot], list[Action]], actions: list[Action], state: SlotState
) -> None:
    slot = new_slot()
    assert scenario(slot) == actions
    assert slot.state is state
    ended = [a for a in actions if isinstance(a, RunEnded)]
    assert slot.exit_code == ended[0].exit_code


def test_a_spawn_that_failed_records_no_run() -> None:
    slot = new_slot()
    slot.start(T0)
    assert slot.spawn_failed("nope", T0) == []
    slot2 = slot_in(S.BACKOFF)
    slot2.tick(T0 + 11)
    assert slot2.spawn_failed("nope", T0 + 11) == []
