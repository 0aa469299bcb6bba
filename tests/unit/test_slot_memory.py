"""The slot core: the memory limit (MEMORY_MAX), and what exceeding it does.

A fake monotonic clock and the tests as the process adapter: see slot_helpers.
"""

from __future__ import annotations

from signal import SIGKILL

import pytest

from bgrscrpt_ioc.core.slot import (
    AutoRestart,
    Cause,
    Kill,
    Policy,
    RunEnded,
    SlotState,
    Spawn,
)
from tests.unit.slot_helpers import (
    AR,
    PID,
    T0,
    S,
    launch,
    launch_running,
    new_slot,
    slot_in,
)

# ---------------------------------------------------------------------------
# memory limit
# ---------------------------------------------------------------------------

LIMIT_MSG = "memory limit 100 MB exceeded (RSS 131 MB)"


@pytest.mark.parametrize("rss", [0.0, 50.0, 100.0])
def test_memory_at_or_under_the_limit_changes_nothing(rss: float) -> None:
    slot = new_slot(memory_max=100.0)
    launch_running(slot)
    message = slot.message
    assert slot.memory_used(rss, T0 + 5) == []
    assert (slot.state, slot.message) == (S.RUNNING, message)


def test_no_limit_whatever_the_memory() -> None:
    slot = new_slot()  # memory_max 0: none
    launch_running(slot)
    assert slot.memory_used(1e9, T0 + 5) == []
    assert slot.state is S.RUNNING


@pytest.mark.parametrize("mode", [AR.ON_FAILURE, AR.ALWAYS])
def test_over_the_limit_kills_at_once_and_restarts_as_a_failure(mode: AutoRestart) -> None:
    slot = new_slot(memory_max=100.0, autorestart=mode)
    launch_running(slot)
    assert slot.memory_used(130.6, T0 + 5) == [Kill(SIGKILL)]
    assert (slot.state, slot.message) == (S.STOPPING, LIMIT_MSG)
    # A second measurement while it dies sends nothing more.
    assert slot.memory_used(140.0, T0 + 5.5) == []
    assert slot.exited(-SIGKILL, T0 + 6) == [RunEnded(Cause.MEMORY, -SIGKILL)]
    assert slot.state is S.BACKOFF
    assert slot.message == f"{LIMIT_MSG}: killed by SIGKILL; restarting in 1 s"
    assert slot.tick(T0 + 7) == [Spawn()]


def test_over_the_limit_with_autorestart_off_exits() -> None:
    slot = new_slot(memory_max=100.0, autorestart=AR.OFF)
    launch_running(slot)
    assert slot.memory_used(130.6, T0 + 5) == [Kill(SIGKILL)]
    assert slot.exited(-SIGKILL, T0 + 6) == [RunEnded(Cause.MEMORY, -SIGKILL)]
    assert (slot.state, slot.message) == (S.EXITED, f"{LIMIT_MSG}: killed by SIGKILL")
    assert slot.next_deadline() is None


def test_over_the_limit_while_starting_counts_towards_the_start_limit() -> None:
    slot = new_slot(memory_max=100.0, start_limit_burst=2, backoff_initial=1.0)
    launch(slot)
    assert slot.memory_used(130.6, T0 + 0.5) == [Kill(SIGKILL)]
    slot.exited(-SIGKILL, T0 + 0.6)
    assert slot.state is S.BACKOFF
    assert slot.tick(T0 + 1.6) == [Spawn()]
    slot.spawned(PID + 1, T0 + 1.6)
    assert slot.memory_used(130.6, T0 + 2) == [Kill(SIGKILL)]
    assert slot.exited(-SIGKILL, T0 + 2.1) == [RunEnded(Cause.START_LIMIT, -SIGKILL)]
    assert slot.state is S.FATAL
    assert LIMIT_MSG in slot.message and slot.message.startswith("FATAL: 2 starts")


@pytest.mark.parametrize("state", [S.STOPPED, S.BACKOFF, S.STOPPING, S.EXITED, S.FATAL])
def test_memory_measured_outside_a_run_is_ignored(state: SlotState) -> None:
    slot = slot_in(state)
    slot.policy = Policy(memory_max=100.0)
    before = (slot.state, slot.message, slot.next_deadline())
    assert slot.memory_used(1e6, T0 + 10.5) == []
    assert (slot.state, slot.message, slot.next_deadline()) == before


def test_memory_before_the_spawn_is_confirmed_is_ignored() -> None:
    slot = new_slot(memory_max=100.0)
    assert slot.start(T0) == [Spawn()]
    assert slot.memory_used(1e6, T0) == []
    assert slot.state is S.STARTING


def test_an_operator_stop_after_a_memory_kill_keeps_the_slot_stopped() -> None:
    slot = new_slot(memory_max=100.0)
    launch_running(slot)
    slot.memory_used(130.6, T0 + 5)
    assert slot.stop(T0 + 5.1) == []
    slot.exited(-SIGKILL, T0 + 5.2)
    assert slot.state is S.STOPPED
