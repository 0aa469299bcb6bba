"""The slot core: back-off between automatic restarts, and the start limit that
ends them (FATAL).

A fake monotonic clock and the tests as the process adapter: see slot_helpers.
"""

from __future__ import annotations

import pytest

from bgrscrpt_ioc.core.slot import (
    AutoRestart,
    Cause,
    RunEnded,
    Slot,
    SlotState,
    Spawn,
)
from tests.unit.slot_helpers import (
    AR,
    PID,
    T0,
    S,
    fail_fast,
    launch,
    launch_running,
    new_slot,
    slot_in,
)

# ---------------------------------------------------------------------------
# back-off and the start limit
# ---------------------------------------------------------------------------


def backoff_delays(slot: Slot, failures: int, rc: int = 1) -> list[float]:
    """Start once, then let every run die 0.1 s after it spawns; return each back-off."""
    now = T0
    assert slot.start(now) == [Spawn()]
    delays = []
    for _ in range(failures):
        actions = fail_fast(slot, now, rc)
        died = now + 0.1
        assert slot.state is S.BACKOFF, slot.message
        assert actions == [RunEnded(Cause.EXIT_CODE if rc >= 0 else Cause.SIGNAL, rc)]
        retry = slot.next_deadline()
        assert retry is not None
        delays.append(round(retry - died, 9))
        assert slot.message.endswith(f"; restarting in {retry - died:g} s")
        assert slot.tick(retry) == [Spawn()]
        now = retry
    return delays


def test_backoff_doubles_from_one_second_and_is_capped() -> None:
    slot = new_slot(start_limit_burst=100, start_limit_interval=1000.0, backoff_max=20.0)
    assert backoff_delays(slot, 8) == [1, 2, 4, 8, 16, 20, 20, 20]


def test_backoff_default_policy_before_the_start_limit() -> None:
    slot = new_slot()
    assert backoff_delays(slot, 4) == [1, 2, 4, 8]


def test_backoff_with_other_initial_delay() -> None:
    slot = new_slot(start_limit_burst=100, backoff_initial=0.5, backoff_max=3.0)
    assert backoff_delays(slot, 5, rc=-11) == [0.5, 1, 2, 3, 3]


def test_backoff_is_not_reached_before_its_time() -> None:
    slot = slot_in(S.BACKOFF)
    assert slot.tick(T0 + 10.999) == []
    assert slot.state is S.BACKOFF
    assert slot.tick(T0 + 11) == [Spawn()]


def test_backoff_restarts_from_one_second_after_an_operator_start() -> None:
    slot = new_slot(start_limit_burst=100)
    backoff_delays(slot, 3)  # delays 1, 2, 4; a 4th run is now STARTING
    slot.spawned(PID, T0 + 20)
    slot.exited(1, T0 + 20.1)
    assert slot.next_deadline() == pytest.approx(T0 + 28.1)  # 8 s
    assert slot.start(T0 + 21) == [Spawn()]  # operator START forgets the history
    fail_fast(slot, T0 + 21)
    assert slot.next_deadline() == pytest.approx(T0 + 22.1)  # 1 s again


@pytest.mark.parametrize("rc", [1, 0])
@pytest.mark.parametrize("mode", list(AutoRestart))
@pytest.mark.parametrize(("burst", "interval"), [(5, 60.0), (3, 30.0), (1, 10.0)])
def test_start_limit_goes_fatal(burst: int, interval: float, mode: AutoRestart, rc: int) -> None:
    # Failed starts are retried whatever AUTORESTART says, until the start limit.
    slot = new_slot(autorestart=mode, start_limit_burst=burst, start_limit_interval=interval)
    now = T0
    assert slot.start(now) == [Spawn()]
    for i in range(1, burst + 1):
        actions = fail_fast(slot, now, rc=rc)
        if i < burst:
            assert actions == [RunEnded(Cause.EXIT_CODE, rc)]
            assert slot.state is S.BACKOFF
            retry = slot.next_deadline()
            assert retry is not None
            assert slot.tick(retry) == [Spawn()]
            now = retry
    assert actions == [RunEnded(Cause.START_LIMIT, rc)]
    assert slot.state is S.FATAL
    assert slot.start_count == burst
    assert slot.message == (
        f"FATAL: {burst} starts within {interval:g} s; "
        f"last: failed to start: exited with code {rc} after 0.10 s; put START to try again"
    )
    assert slot.next_deadline() is None
    assert slot.tick(now + 1000) == []
    assert slot.state is S.FATAL


def test_start_limit_counts_runs_that_got_to_running_too() -> None:
    slot = new_slot(start_limit_burst=3, start_limit_interval=60.0)
    launch_running(slot)  # start 1 at T0
    slot.exited(1, T0 + 5)  # 1 s back-off
    assert slot.tick(T0 + 6) == [Spawn()]  # start 2
    slot.spawned(PID, T0 + 6)
    slot.tick(T0 + 7)
    assert slot.state is S.RUNNING
    slot.exited(1, T0 + 20)  # 2 s back-off
    assert slot.tick(T0 + 22) == [Spawn()]  # start 3
    slot.spawned(PID, T0 + 22)
    slot.tick(T0 + 23)
    assert slot.exited(-6, T0 + 30) == [RunEnded(Cause.START_LIMIT, -6)]
    assert slot.state is S.FATAL
    assert slot.message == (
        "FATAL: 3 starts within 60 s; last: killed by SIGABRT; put START to try again"
    )


def test_failed_start_at_the_start_limit_keeps_the_summary() -> None:
    slot = new_slot(autorestart=AR.OFF, start_limit_burst=1)
    launch(slot)
    assert slot.exited(1, T0 + 0.2, "ImportError: no module named x") == [
        RunEnded(Cause.START_LIMIT, 1)
    ]
    assert slot.state is S.FATAL
    assert slot.message == (
        "FATAL: 1 starts within 60 s; last: failed to start: exited with code 1 after 0.20 s: "
        "ImportError: no module named x; put START to try again"
    )


def test_always_restarting_clean_exits_also_hit_the_start_limit() -> None:
    slot = new_slot(autorestart=AR.ALWAYS, start_limit_burst=2)
    slot.start(T0)
    assert fail_fast(slot, T0, rc=0) == [RunEnded(Cause.EXIT_CODE, 0)]
    assert slot.tick(T0 + 1.1) == [Spawn()]
    assert fail_fast(slot, T0 + 1.1, rc=0) == [RunEnded(Cause.START_LIMIT, 0)]
    assert slot.state is S.FATAL


def test_starts_older_than_the_interval_do_not_count() -> None:
    slot = new_slot(start_limit_burst=3, start_limit_interval=10.0)
    launch_running(slot)  # start 1 at T0
    slot.exited(1, T0 + 6)
    assert slot.tick(T0 + 7) == [Spawn()]  # start 2 at T0+7
    slot.spawned(PID, T0 + 7)
    slot.exited(1, T0 + 7.5)  # 2 s back-off (2 recent starts)
    assert slot.next_deadline() == T0 + 9.5
    assert slot.tick(T0 + 9.5) == [Spawn()]  # start 3 at T0+9.5
    slot.spawned(PID, T0 + 9.5)
    # dies at T0+10.5: start 1 is 10.5 s old and no longer counts -> 2 starts, not 3
    assert slot.exited(1, T0 + 10.5) == [RunEnded(Cause.EXIT_CODE, 1)]
    assert slot.state is S.BACKOFF
    assert slot.next_deadline() == T0 + 12.5  # delay from the 2 recent starts


@pytest.mark.parametrize(("died", "state"), [(T0 + 10.0, S.BACKOFF), (T0 + 9.999, S.FATAL)])
def test_a_start_exactly_one_interval_old_no_longer_counts(died: float, state: SlotState) -> None:
    slot = new_slot(start_limit_burst=2, start_limit_interval=10.0)
    launch_running(slot)  # start 1 at T0
    slot.exited(1, T0 + 2)
    assert slot.tick(T0 + 3) == [Spawn()]  # start 2
    slot.spawned(PID, T0 + 3)
    slot.tick(T0 + 4)
    slot.exited(1, died)
    assert slot.state is state


@pytest.mark.parametrize("command", ["start", "restart"])
def test_operator_start_after_fatal_resets_the_start_limit(command: str) -> None:
    slot = new_slot(start_limit_burst=3)
    slot.start(T0)
    now = T0
    while slot.state is not S.FATAL:
        fail_fast(slot, now)
        if slot.state is S.BACKOFF:
            retry = slot.next_deadline()
            assert retry is not None
            slot.tick(retry)
            now = retry
    assert getattr(slot, command)(now + 1) == [Spawn()]
    # a full burst is available again, with the back-off from 1 s
    now += 1
    for expected in (1, 2):
        assert fail_fast(slot, now) == [RunEnded(Cause.EXIT_CODE, 1)]
        assert slot.state is S.BACKOFF
        retry = slot.next_deadline()
        assert retry is not None
        assert retry - (now + 0.1) == pytest.approx(expected)
        slot.tick(retry)
        now = retry
    assert fail_fast(slot, now) == [RunEnded(Cause.START_LIMIT, 1)]
    assert slot.state is S.FATAL


def test_operator_start_from_exited_also_forgets_old_starts() -> None:
    slot = new_slot(start_limit_burst=2)
    slot.start(T0)
    fail_fast(slot, T0)  # start 1 fails: BACKOFF
    slot.tick(T0 + 1.1)  # start 2
    slot.spawned(PID, T0 + 1.1)
    slot.tick(T0 + 2.1)
    slot.exited(0, T0 + 5)
    assert slot.state is S.EXITED
    slot.start(T0 + 6)  # would be the 3rd start in 60 s
    assert fail_fast(slot, T0 + 6) == [RunEnded(Cause.EXIT_CODE, 1)]
    assert slot.state is S.BACKOFF


def test_failed_operator_spawn_does_not_count_as_a_start() -> None:
    slot = new_slot(start_limit_burst=2)
    for i in range(5):
        assert slot.start(T0 + i) == [Spawn()]
        slot.spawn_failed("no script", T0 + i)
    assert (slot.state, slot.start_count) == (S.STOPPED, 0)
    slot.start(T0 + 10)
    assert fail_fast(slot, T0 + 10) == [RunEnded(Cause.EXIT_CODE, 1)]
    assert slot.state is S.BACKOFF


def test_failed_operator_spawn_in_backoff_does_not_count_towards_the_limit() -> None:
    slot = new_slot(start_limit_burst=2)
    launch_running(slot)
    slot.exited(1, T0 + 10)  # BACKOFF, retry at T0+11
    assert slot.start(T0 + 10.5) == [Spawn()]  # operator: history reset to this start
    slot.spawn_failed("cannot start", T0 + 10.5)  # ... which never happened
    assert slot.state is S.BACKOFF
    assert slot.tick(T0 + 11) == [Spawn()]  # the pending automatic retry: 1st counted start
    assert fail_fast(slot, T0 + 11) == [RunEnded(Cause.EXIT_CODE, 1)]
    assert slot.state is S.BACKOFF
