"""The slot core: notifications (REGISTERED, STATUS), what the HEARTBEAT and UPTIME
PVs read, and the next deadline in each state.

A fake monotonic clock and the tests as the process adapter: see slot_helpers.
"""

from __future__ import annotations

import pytest

from bgrscrpt_ioc.core.slot import (
    SlotState,
    Spawn,
)
from tests.unit.slot_helpers import (
    PID,
    T0,
    S,
    launch,
    launch_running,
    new_slot,
    slot_in,
)

# ---------------------------------------------------------------------------
# notify: REGISTERED, STATUS, ignored when not running
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING])
def test_ready_sets_registered(state: SlotState) -> None:
    slot = slot_in(state)
    assert slot.registered is False
    assert slot.notified({"READY": "0"}, T0 + 1) == []
    assert slot.registered is False
    assert slot.notified({"READY": "1"}, T0 + 1) == []
    assert slot.registered is True


def test_status_sets_status_text_and_message() -> None:
    slot = slot_in(S.RUNNING)
    slot.notified({"STATUS": "plotting 3 blocks"}, T0 + 2)
    assert (slot.status_text, slot.message) == ("plotting 3 blocks", "plotting 3 blocks")
    slot.notified({"STATUS": ""}, T0 + 3)
    assert (slot.status_text, slot.message) == ("", "")


@pytest.mark.parametrize(
    "how",
    ["exit-starting", "exit-running", "stop", "watchdog", "restart"],
)
def test_registered_is_cleared_when_the_run_ends(how: str) -> None:
    slot = new_slot(watchdog=5.0)
    launch(slot)
    slot.notified({"READY": "1"}, T0 + 0.5)
    if how == "exit-starting":
        slot.exited(1, T0 + 0.6)
    elif how == "exit-running":
        slot.tick(T0 + 1)
        slot.exited(0, T0 + 2)
    elif how == "stop":
        slot.stop(T0 + 0.6)
        assert slot.registered is True  # still up until it has exited
        slot.exited(-15, T0 + 0.7)
    elif how == "watchdog":
        slot.tick(T0 + 1)
        slot.tick(T0 + 6)
        slot.exited(-15, T0 + 6.1)
    else:
        slot.restart(T0 + 0.6)
        slot.exited(-15, T0 + 0.7)
    assert slot.registered is False


@pytest.mark.parametrize("state", [S.STOPPED, S.BACKOFF, S.STOPPING, S.EXITED, S.FATAL])
def test_notify_is_ignored_when_not_running(state: SlotState) -> None:
    slot = slot_in(state)
    slot.watchdog = 5.0
    before = (slot.registered, slot.status_text, slot.message, slot.last_beat, slot.state)
    fields = {"READY": "1", "WATCHDOG": "1", "STATUS": "late words"}
    assert slot.notified(fields, T0 + 15) == []
    after = (slot.registered, slot.status_text, slot.message, slot.last_beat, slot.state)
    assert after == before


def test_beat_while_stopping_does_not_matter() -> None:
    slot = new_slot(watchdog=5.0)
    launch_running(slot)
    slot.stop(T0 + 2)
    slot.notified({"WATCHDOG": "1"}, T0 + 3)
    assert slot.last_beat == T0
    assert slot.next_deadline() == T0 + 12  # the stop timeout, not a watchdog


# ---------------------------------------------------------------------------
# what the HEARTBEAT / UPTIME PVs read
# ---------------------------------------------------------------------------

# state -> (healthy at T0+15, uptime at T0+15.7)
VIEWS = {
    S.STOPPED: (False, 0),
    S.STARTING: (False, 15),  # (not promoted because nobody ticked)
    S.RUNNING: (True, 15),
    S.BACKOFF: (False, 0),
    S.STOPPING: (False, 15),  # the run is still alive
    S.EXITED: (False, 0),
    S.FATAL: (False, 0),
}


@pytest.mark.parametrize("state", list(SlotState))
def test_healthy_and_uptime_per_state(state: SlotState) -> None:
    slot = slot_in(state)
    healthy, uptime = VIEWS[state]
    assert slot.healthy(T0 + 15) is healthy
    assert slot.uptime(T0 + 15.7) == uptime


def test_uptime_counts_whole_seconds_of_the_current_run() -> None:
    slot = new_slot()
    assert slot.start(T0) == [Spawn()]
    assert slot.uptime(T0 + 5) == 0  # not spawned yet
    slot.spawned(PID, T0 + 0.5)
    assert [slot.uptime(T0 + d) for d in (0.5, 1.49, 1.5, 60.5, 3600.6)] == [0, 0, 1, 60, 3600]
    slot.tick(T0 + 1.5)
    slot.exited(1, T0 + 10)
    assert slot.uptime(T0 + 10.5) == 0
    slot.tick(T0 + 11)
    slot.spawned(PID, T0 + 11)
    assert slot.uptime(T0 + 13.2) == 2  # from the new run, not the first


def test_healthy_follows_the_watchdog() -> None:
    slot = new_slot(watchdog=5.0)
    launch_running(slot)
    assert slot.healthy(T0 + 4.99) is True
    # At the deadline the watchdog fires, so the slot is no longer healthy.
    assert slot.healthy(T0 + 5) is False
    slot.notified({"WATCHDOG": "1"}, T0 + 5.5)
    assert slot.healthy(T0 + 5.5) is True
    assert slot.healthy(T0 + 10.49) is True
    assert slot.healthy(T0 + 10.5) is False


# ---------------------------------------------------------------------------
# next_deadline in each state
# ---------------------------------------------------------------------------

# (state, watchdog, expected deadline) for slot_in(state) after setting the watchdog
# at T0+0.2 (i.e. the period counts from T0+0.2).
DEADLINES = [
    (S.STOPPED, 0.0, None),
    (S.STOPPED, 5.0, None),
    (S.STARTING, 0.0, T0 + 1),
    (S.STARTING, 5.0, T0 + 1),
    (S.STARTING, 0.5, T0 + 0.7),
    (S.RUNNING, 0.0, None),
    (S.RUNNING, 5.0, T0 + 5.2),
    (S.BACKOFF, 0.0, T0 + 11),
    (S.BACKOFF, 5.0, T0 + 11),
    (S.STOPPING, 0.0, T0 + 20),
    (S.STOPPING, 5.0, T0 + 20),
    (S.EXITED, 0.0, None),
    (S.EXITED, 5.0, None),
    (S.FATAL, 0.0, None),
    (S.FATAL, 5.0, None),
]


def test_deadline_table_covers_every_state() -> None:
    assert {s for s, *_ in DEADLINES} == set(SlotState)


@pytest.mark.parametrize(
    ("state", "watchdog", "deadline"),
    DEADLINES,
    ids=[f"{s.name}-wd{w:g}" for s, w, _ in DEADLINES],
)
def test_next_deadline(state: SlotState, watchdog: float, deadline: float | None) -> None:
    slot = slot_in(state)
    slot.set_watchdog(watchdog, T0 + 0.2)
    assert slot.next_deadline() == (None if deadline is None else pytest.approx(deadline))


def test_next_deadline_is_none_while_a_spawn_is_pending() -> None:
    slot = new_slot(watchdog=5.0)
    assert slot.start(T0) == [Spawn()]
    assert slot.next_deadline() is None


def test_ticking_early_does_nothing_in_any_state() -> None:
    for state in SlotState:
        slot = slot_in(state)
        snapshot = (slot.state, slot.message, slot.next_deadline())
        # T0+0.5 is before every deadline slot_in() leaves behind
        assert slot.tick(T0 + 0.5) == [], state
        assert (slot.state, slot.message, slot.next_deadline()) == snapshot, state
