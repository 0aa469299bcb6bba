"""The slot core: the heartbeat watchdog, its deadlines and what its expiry does.

A fake monotonic clock and the tests as the process adapter: see slot_helpers.
"""

from __future__ import annotations

from signal import SIGKILL, SIGTERM

import pytest

from bgrscrpt_ioc.core.slot import (
    AutoRestart,
    Cause,
    Kill,
    RunEnded,
    Spawn,
    describe_exit,
)
from tests.unit.slot_helpers import (
    AR,
    PID,
    T0,
    S,
    launch,
    launch_running,
    new_slot,
)

# ---------------------------------------------------------------------------
# watchdog
# ---------------------------------------------------------------------------


def test_watchdog_deadline_counts_from_the_spawn() -> None:
    slot = new_slot(watchdog=5.0)
    launch(slot)
    assert slot.next_deadline() == T0 + 1  # startsecs comes first
    slot.tick(T0 + 1)
    assert slot.state is S.RUNNING
    assert slot.next_deadline() == T0 + 5
    assert slot.tick(T0 + 4.999) == []
    assert slot.state is S.RUNNING
    assert slot.tick(T0 + 5.0) == [Kill(SIGTERM)]  # at the deadline, not after it
    assert slot.state is S.STOPPING
    assert slot.message == "watchdog: no beat for 5.0 s"
    assert slot.next_deadline() == T0 + 15.0  # stop_timeout from the kill


# (last beat, watchdog): float sums where now - last_beat < watchdog at now == deadline
WATCHDOG_CASES = [(12345.001, 0.3), (T0 + 0.7, 0.1), (98765.4321, 2.2), (T0 + 3.3, 1.0)]


@pytest.mark.parametrize(("beat", "period"), WATCHDOG_CASES)
def test_tick_at_next_deadline_fires_the_watchdog(beat: float, period: float) -> None:
    slot = new_slot(startsecs=0.0)
    launch_running(slot, now=beat - 10)
    slot.set_watchdog(period, beat)
    deadline = slot.next_deadline()
    assert deadline is not None
    assert slot.tick(deadline) == [Kill(SIGTERM)]
    assert slot.state is S.STOPPING


@pytest.mark.parametrize("mode", list(AutoRestart))
def test_watchdog_does_not_run_before_the_spawn_is_confirmed(mode: AutoRestart) -> None:
    slot = new_slot(autorestart=mode)
    slot.set_watchdog(5.0, T0 - 50)  # a stale period: long overdue
    assert slot.start(T0) == [Spawn()]
    assert slot.next_deadline() is None
    assert slot.tick(T0) == []
    assert slot.tick(T0 + 1000) == []
    assert (slot.state, slot.pid, slot.run_started) == (S.STARTING, 0, None)
    slot.spawned(PID, T0 + 1000)  # the period counts from the spawn
    assert slot.next_deadline() == T0 + 1001  # startsecs first
    assert slot.tick(T0 + 1001) == []
    assert slot.state is S.RUNNING
    assert slot.next_deadline() == T0 + 1005


def test_watchdog_does_not_run_before_an_automatic_respawn_is_confirmed() -> None:
    slot = new_slot(watchdog=2.0)
    launch_running(slot)
    slot.exited(1, T0 + 1.5)  # BACKOFF; last beat T0
    assert slot.tick(T0 + 2.5) == [Spawn()]
    assert slot.tick(T0 + 100) == []  # spawn not yet reported: no watchdog, no promotion
    assert slot.state is S.STARTING


def test_watchdog_deadline_counts_from_each_beat() -> None:
    slot = new_slot(watchdog=5.0)
    launch_running(slot)
    for beat in (T0 + 3, T0 + 7.5, T0 + 12):
        assert slot.notified({"WATCHDOG": "1"}, beat) == []
        assert slot.next_deadline() == beat + 5
        assert slot.tick(beat + 4.9) == []
        assert slot.state is S.RUNNING
    assert slot.tick(T0 + 17.01) == [Kill(SIGTERM)]


def test_watchdog_beats_with_other_fields_count() -> None:
    slot = new_slot(watchdog=2.0)
    launch_running(slot)
    slot.notified({"STATUS": "ok", "WATCHDOG": "1"}, T0 + 1.5)
    assert slot.next_deadline() == T0 + 3.5
    slot.notified({"WATCHDOG": "0"}, T0 + 3)  # not a beat
    assert slot.next_deadline() == T0 + 3.5


def test_watchdog_shorter_than_startsecs_fires_while_starting() -> None:
    slot = new_slot(watchdog=0.5, startsecs=1.0)
    launch(slot)
    assert slot.next_deadline() == T0 + 0.5
    assert slot.tick(T0 + 0.6) == [Kill(SIGTERM)]
    assert slot.state is S.STOPPING
    assert slot.exited(-15, T0 + 0.7) == [RunEnded(Cause.WATCHDOG, -15)]
    assert slot.state is S.BACKOFF


def test_beats_while_starting_keep_the_watchdog_happy() -> None:
    slot = new_slot(watchdog=0.5, startsecs=1.0)
    launch(slot)
    slot.notified({"WATCHDOG": "1"}, T0 + 0.4)
    assert slot.next_deadline() == T0 + 0.9
    slot.notified({"WATCHDOG": "1"}, T0 + 0.8)
    assert slot.next_deadline() == T0 + 1.0  # startsecs now first
    assert slot.tick(T0 + 1.0) == []
    assert slot.state is S.RUNNING
    assert slot.next_deadline() == T0 + 1.3


@pytest.mark.parametrize("mode", [AR.ON_FAILURE, AR.ALWAYS])
@pytest.mark.parametrize("rc", [-15, 0, 1])
def test_watchdog_expiry_restarts_via_backoff(mode: AutoRestart, rc: int) -> None:
    slot = new_slot(watchdog=5.0, autorestart=mode)
    launch_running(slot)
    assert slot.tick(T0 + 6) == [Kill(SIGTERM)]
    assert slot.exited(rc, T0 + 6.5) == [RunEnded(Cause.WATCHDOG, rc)]
    assert slot.state is S.BACKOFF
    assert slot.message == f"watchdog: {describe_exit(rc)}; restarting in 1 s"
    assert slot.exit_code == rc
    assert slot.next_deadline() == T0 + 7.5
    assert slot.tick(T0 + 7.5) == [Spawn()]
    slot.spawned(PID + 1, T0 + 7.5)
    assert slot.next_deadline() == T0 + 8.5  # startsecs; the watchdog restarts from the spawn
    slot.tick(T0 + 8.5)
    assert slot.next_deadline() == T0 + 12.5


@pytest.mark.parametrize(
    ("rc", "what"),
    [(-15, "killed by SIGTERM"), (0, "exited with code 0"), (1, "exited with code 1")],
)
def test_watchdog_expiry_with_autorestart_off_exits(rc: int, what: str) -> None:
    slot = new_slot(watchdog=5.0, autorestart=AR.OFF)
    launch_running(slot)
    assert slot.tick(T0 + 6) == [Kill(SIGTERM)]
    assert slot.message == "watchdog: no beat for 6.0 s"
    assert slot.exited(rc, T0 + 6.5) == [RunEnded(Cause.WATCHDOG, rc)]
    assert slot.state is S.EXITED
    assert slot.message == f"watchdog: {what}"
    assert (slot.exit_code, slot.pid, slot.run_started) == (rc, 0, None)
    assert slot.next_deadline() is None
    assert slot.tick(T0 + 1000) == []
    assert slot.state is S.EXITED
    assert slot.start_count == 1


def test_watchdog_expiry_with_autorestart_off_after_sigkill_exits() -> None:
    slot = new_slot(watchdog=5.0, stop_timeout=3.0, autorestart=AR.OFF)
    launch_running(slot)
    assert slot.tick(T0 + 5) == [Kill(SIGTERM)]
    assert slot.tick(T0 + 8) == [Kill(SIGKILL)]
    assert slot.exited(-9, T0 + 8.1) == [RunEnded(Cause.WATCHDOG, -9)]
    assert (slot.state, slot.message) == (S.EXITED, "watchdog: killed by SIGKILL")


def test_watchdog_expiry_with_autorestart_off_while_starting_exits() -> None:
    slot = new_slot(watchdog=0.5, startsecs=1.0, autorestart=AR.OFF)
    launch(slot)
    assert slot.tick(T0 + 0.5) == [Kill(SIGTERM)]
    assert slot.exited(-15, T0 + 0.6) == [RunEnded(Cause.WATCHDOG, -15)]
    assert (slot.state, slot.message) == (S.EXITED, "watchdog: killed by SIGTERM")


def test_watchdog_kill_escalates_to_sigkill() -> None:
    slot = new_slot(watchdog=5.0, stop_timeout=3.0)
    launch_running(slot)
    assert slot.tick(T0 + 6) == [Kill(SIGTERM)]
    assert slot.tick(T0 + 9) == [Kill(SIGKILL)]
    assert slot.exited(-9, T0 + 9.1) == [RunEnded(Cause.WATCHDOG, -9)]
    assert slot.state is S.BACKOFF
    assert slot.message == "watchdog: killed by SIGKILL; restarting in 1 s"


def test_stop_during_watchdog_kill_cancels_the_restart() -> None:
    slot = new_slot(watchdog=5.0)
    launch_running(slot)
    slot.tick(T0 + 6)
    assert slot.stop(T0 + 6.2) == []
    assert slot.exited(-15, T0 + 6.5) == [RunEnded(Cause.WATCHDOG, -15)]
    assert slot.state is S.STOPPED
    assert slot.next_deadline() is None


def test_start_during_watchdog_kill_starts_at_once() -> None:
    slot = new_slot(watchdog=5.0)
    launch_running(slot)
    slot.tick(T0 + 6)
    assert slot.start(T0 + 6.2) == []
    assert slot.exited(-15, T0 + 6.5) == [RunEnded(Cause.WATCHDOG, -15), Spawn()]
    assert slot.state is S.STARTING


def test_watchdog_kills_count_towards_the_start_limit() -> None:
    slot = new_slot(watchdog=2.0, start_limit_burst=2)
    launch_running(slot)
    assert slot.tick(T0 + 2.5) == [Kill(SIGTERM)]
    assert slot.exited(-15, T0 + 2.6) == [RunEnded(Cause.WATCHDOG, -15)]
    assert slot.tick(T0 + 3.6) == [Spawn()]
    slot.spawned(PID, T0 + 3.6)
    slot.tick(T0 + 4.6)
    assert slot.tick(T0 + 6.0) == [Kill(SIGTERM)]
    assert slot.exited(-15, T0 + 6.1) == [RunEnded(Cause.START_LIMIT, -15)]
    assert slot.state is S.FATAL
    assert slot.message == (
        "FATAL: 2 starts within 60 s; last: watchdog: killed by SIGTERM; put START to try again"
    )


def test_set_watchdog_restarts_the_period() -> None:
    slot = new_slot()
    launch_running(slot)
    assert slot.next_deadline() is None
    slot.set_watchdog(5, T0 + 50)  # last beat (the spawn) was 50 s ago
    assert slot.watchdog == 5.0
    assert isinstance(slot.watchdog, float)
    assert slot.next_deadline() == T0 + 55
    assert slot.healthy(T0 + 54) is True
    assert slot.tick(T0 + 54) == []
    assert slot.state is S.RUNNING
    slot.set_watchdog(10.0, T0 + 54)  # a new period counts from now
    assert slot.next_deadline() == T0 + 64
    assert slot.tick(T0 + 64.5) == [Kill(SIGTERM)]


def test_set_watchdog_zero_turns_it_off() -> None:
    slot = new_slot(watchdog=5.0)
    launch_running(slot)
    slot.set_watchdog(0, T0 + 3)
    assert slot.next_deadline() is None
    assert slot.tick(T0 + 1000) == []
    assert slot.healthy(T0 + 1000) is True


@pytest.mark.parametrize("bad", [-1.0, -0.001, -1e9, float("nan"), float("inf"), float("-inf")])
def test_bad_watchdog_raises_and_changes_nothing(bad: float) -> None:
    slot = new_slot(watchdog=5.0)
    launch_running(slot)
    slot.notified({"WATCHDOG": "1"}, T0 + 2)
    with pytest.raises(ValueError, match="watchdog"):
        slot.set_watchdog(bad, T0 + 3)
    assert (slot.watchdog, slot.last_beat) == (5.0, T0 + 2)


def test_watchdog_set_while_stopped_applies_to_the_next_run() -> None:
    slot = new_slot()
    slot.set_watchdog(3.0, T0 - 50)
    launch_running(slot)
    assert slot.next_deadline() == T0 + 3
