"""The slot core: what a spawn, a failed spawn and an exit do in each state, and
the startsecs boundary between a failed start and a run.

A fake monotonic clock and the tests as the process adapter: see slot_helpers.
"""

from __future__ import annotations

import pytest

from bgrscrpt_ioc.core.slot import (
    AutoRestart,
    Cause,
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
# reports: spawned / spawn_failed
# ---------------------------------------------------------------------------


def test_spawned_sets_the_run_up() -> None:
    slot = new_slot()
    assert slot.start(T0) == [Spawn()]
    assert slot.start_count == 1
    assert slot.spawned(1234, T0 + 0.2) == []
    assert slot.pid == 1234
    assert slot.run_started == T0 + 0.2
    assert slot.last_beat == T0 + 0.2
    assert slot.message == "started, pid 1234"
    assert slot.state is S.STARTING


def test_spawned_clears_the_previous_runs_registration_and_status() -> None:
    slot = new_slot(autorestart=AR.OFF)
    launch_running(slot)
    slot.notified({"READY": "1", "STATUS": "plotting"}, T0 + 2)
    assert (slot.registered, slot.status_text) == (True, "plotting")
    slot.exited(0, T0 + 3)
    assert slot.status_text == "plotting"  # last words stay visible until the next run
    assert slot.start(T0 + 4) == [Spawn()]
    slot.spawned(5, T0 + 4)
    assert (slot.registered, slot.status_text) == (False, "")


# (state before the operator command, command): a failed spawn returns the slot there.
@pytest.mark.parametrize("command", ["start", "restart"])
@pytest.mark.parametrize("state", [S.STOPPED, S.EXITED, S.FATAL, S.BACKOFF])
def test_operator_start_that_cannot_spawn_changes_nothing(state: SlotState, command: str) -> None:
    slot = slot_in(state)
    count, code = slot.start_count, slot.exit_code
    assert getattr(slot, command)(T0 + 10.5) == [Spawn()]
    assert slot.spawn_failed("no script at /cfg/background_script.py", T0 + 10.5) == []
    assert slot.state is state
    assert slot.message == "no script at /cfg/background_script.py"
    assert (slot.pid, slot.run_started, slot.start_count, slot.exit_code) == (0, None, count, code)


def test_operator_start_in_backoff_that_cannot_spawn_leaves_the_pending_retry() -> None:
    # Current behaviour (questionable, see report): the slot goes back to BACKOFF and
    # its old retry timer still fires an automatic restart.
    slot = slot_in(S.BACKOFF)
    slot.start(T0 + 10.5)
    slot.spawn_failed("cannot start", T0 + 10.5)
    assert slot.state is S.BACKOFF
    assert slot.next_deadline() == T0 + 11
    assert slot.tick(T0 + 11) == [Spawn()]


@pytest.mark.parametrize("queue", ["start", "restart"])
def test_queued_start_that_cannot_spawn_leaves_the_slot_stopped(queue: str) -> None:
    slot = slot_in(S.STOPPING)
    getattr(slot, queue)(T0 + 11)
    assert slot.exited(-15, T0 + 12) == [RunEnded(Cause.STOP, -15), Spawn()]
    assert slot.spawn_failed("script vanished", T0 + 12) == []
    assert (slot.state, slot.message, slot.start_count) == (S.STOPPED, "script vanished", 1)
    assert slot.next_deadline() is None


def test_automatic_restart_that_cannot_spawn_goes_fatal_without_recording_a_run() -> None:
    slot = slot_in(S.BACKOFF)
    assert slot.tick(T0 + 11) == [Spawn()]
    assert slot.start_count == 2
    assert slot.spawn_failed("no script at /cfg/background_script.py", T0 + 11) == []
    assert slot.state is S.FATAL
    assert slot.message == "FATAL: no script at /cfg/background_script.py"
    assert (slot.pid, slot.start_count, slot.exit_code) == (0, 1, 1)
    assert slot.next_deadline() is None
    assert slot.tick(T0 + 1000) == []
    # and an operator START gets out of it
    assert slot.start(T0 + 20) == [Spawn()]
    slot.spawned(5, T0 + 20)
    assert slot.state is S.STARTING


# ---------------------------------------------------------------------------
# reports: exited
# ---------------------------------------------------------------------------

# (autorestart, returncode, cause, what) for a run that dies 0.5 s after spawning,
# i.e. while STARTING (startsecs = 1 s): a failed start, retried whatever AUTORESTART
# says and whatever the exit code (supervisord's startretries).
EARLY_EXITS = [
    (AR.ON_FAILURE, 0, "exit-code", "exited with code 0"),
    (AR.ON_FAILURE, 1, "exit-code", "exited with code 1"),
    (AR.ON_FAILURE, -11, "signal", "killed by SIGSEGV"),
    (AR.OFF, 0, "exit-code", "exited with code 0"),
    (AR.OFF, 1, "exit-code", "exited with code 1"),
    (AR.OFF, -9, "signal", "killed by SIGKILL"),
    (AR.ALWAYS, 0, "exit-code", "exited with code 0"),
    (AR.ALWAYS, 2, "exit-code", "exited with code 2"),
    (AR.ALWAYS, -15, "signal", "killed by SIGTERM"),
]


@pytest.mark.parametrize(
    ("mode", "rc", "cause", "what"),
    EARLY_EXITS,
    ids=[f"{m.name}-{rc}" for m, rc, *_ in EARLY_EXITS],
)
def test_exit_while_starting_is_a_failed_start(
    mode: AutoRestart, rc: int, cause: str, what: str
) -> None:
    slot = new_slot(autorestart=mode)
    launch(slot)
    slot.notified({"READY": "1"}, T0 + 0.1)
    assert slot.exited(rc, T0 + 0.5) == [RunEnded(cause, rc)]
    assert slot.state is S.BACKOFF
    assert slot.message == f"failed to start: {what} after 0.50 s; restarting in 1 s"
    assert (slot.exit_code, slot.pid, slot.run_started, slot.registered) == (rc, 0, None, False)
    assert slot.uptime(T0 + 0.7) == 0
    assert slot.next_deadline() == T0 + 1.5
    assert slot.tick(T0 + 1.499) == []
    assert slot.tick(T0 + 1.5) == [Spawn()]
    assert (slot.state, slot.start_count) == (S.STARTING, 2)


def test_clean_exit_within_startsecs_is_a_failed_start() -> None:
    # As documented: a run that dies within startsecs is a failed start and goes to BACKOFF,
    # even with AUTORESTART=On failure and exit code 0.
    slot = new_slot(autorestart=AR.ON_FAILURE)
    launch(slot)
    assert slot.exited(0, T0 + 0.5) == [RunEnded(Cause.EXIT_CODE, 0)]
    assert slot.state is S.BACKOFF
    assert slot.message == "failed to start: exited with code 0 after 0.50 s; restarting in 1 s"


@pytest.mark.parametrize(("lived", "shown"), [(0.004, "0.00"), (0.126, "0.13"), (0.75, "0.75")])
def test_failed_start_message_shows_two_decimals(lived: float, shown: str) -> None:
    slot = new_slot(autorestart=AR.OFF)
    launch(slot)
    slot.exited(3, T0 + lived)
    assert slot.message == f"failed to start: exited with code 3 after {shown} s; restarting in 1 s"


# (autorestart, returncode, new state, cause, what) for a run that dies while RUNNING.
RUNNING_EXITS = [
    (AR.ON_FAILURE, 0, S.EXITED, "exit-code", "exited with code 0"),
    (AR.ON_FAILURE, 2, S.BACKOFF, "exit-code", "exited with code 2"),
    (AR.ON_FAILURE, -9, S.BACKOFF, "signal", "killed by SIGKILL"),
    (AR.OFF, 0, S.EXITED, "exit-code", "exited with code 0"),
    (AR.OFF, 1, S.EXITED, "exit-code", "exited with code 1"),
    (AR.OFF, -15, S.EXITED, "signal", "killed by SIGTERM"),
    (AR.ALWAYS, 0, S.BACKOFF, "exit-code", "exited with code 0"),
    (AR.ALWAYS, 3, S.BACKOFF, "exit-code", "exited with code 3"),
    (AR.ALWAYS, -2, S.BACKOFF, "signal", "killed by SIGINT"),
]


@pytest.mark.parametrize(
    ("mode", "rc", "new_state", "cause", "what"),
    RUNNING_EXITS,
    ids=[f"{m.name}-{rc}" for m, rc, *_ in RUNNING_EXITS],
)
def test_exit_while_running(
    mode: AutoRestart, rc: int, new_state: SlotState, cause: str, what: str
) -> None:
    slot = new_slot(autorestart=mode)
    launch_running(slot)
    slot.notified({"READY": "1"}, T0 + 2)
    assert slot.exited(rc, T0 + 30) == [RunEnded(cause, rc)]
    assert slot.state is new_state
    if new_state is S.BACKOFF:
        assert slot.message == f"{what}; restarting in 1 s"
        assert slot.next_deadline() == T0 + 31
        assert slot.tick(T0 + 30.999) == []
        assert slot.tick(T0 + 31) == [Spawn()]
        assert slot.state is S.STARTING
        assert slot.start_count == 2
    else:
        assert slot.message == what
        assert slot.next_deadline() is None
        assert slot.tick(T0 + 1000) == []
        assert slot.start_count == 1
    assert (slot.exit_code, slot.pid, slot.registered) == (rc, 0, False)


def test_exit_message_carries_the_summary() -> None:
    slot = slot_in(S.RUNNING)
    slot.exited(1, T0 + 30, "ZeroDivisionError: division by zero")
    assert slot.message == (
        "exited with code 1: ZeroDivisionError: division by zero; restarting in 1 s"
    )
    slot2 = new_slot(autorestart=AR.OFF)
    launch(slot2)
    slot2.exited(1, T0 + 0.3, "SyntaxError: invalid syntax")
    assert slot2.state is S.BACKOFF
    assert slot2.message == (
        "failed to start: exited with code 1 after 0.30 s: SyntaxError: invalid syntax; "
        "restarting in 1 s"
    )
    slot3 = new_slot(autorestart=AR.OFF)
    launch(slot3)
    slot3.exited(-11, T0 + 0.25, "")  # an empty summary adds nothing
    assert slot3.message == "failed to start: killed by SIGSEGV after 0.25 s; restarting in 1 s"


@pytest.mark.parametrize("mode", list(AutoRestart))
@pytest.mark.parametrize(
    ("rc", "what"),
    [(0, "exited with code 0"), (1, "exited with code 1"), (-15, "killed by SIGTERM")],
)
def test_exit_while_stopping_without_queued_start(mode: AutoRestart, rc: int, what: str) -> None:
    slot = slot_in(S.STOPPING, autorestart=mode)
    assert slot.exited(rc, T0 + 11) == [RunEnded(Cause.STOP, rc)]
    assert (slot.state, slot.message, slot.exit_code) == (S.STOPPED, f"stopped ({what})", rc)
    assert (slot.pid, slot.run_started, slot.registered) == (0, None, False)
    assert slot.next_deadline() is None


@pytest.mark.parametrize("queue", ["start", "restart"])
@pytest.mark.parametrize("rc", [0, 1, -15, -9])
def test_exit_while_stopping_with_queued_start(queue: str, rc: int) -> None:
    slot = slot_in(S.STOPPING)
    getattr(slot, queue)(T0 + 11)
    assert slot.exited(rc, T0 + 12) == [RunEnded(Cause.STOP, rc), Spawn()]
    assert (slot.state, slot.exit_code, slot.start_count) == (S.STARTING, rc, 2)


# ---------------------------------------------------------------------------
# startsecs
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("startsecs", [1.0, 3.0, 0.5, 2.25])
def test_startsecs_promotes_to_running_exactly_at_the_boundary(startsecs: float) -> None:
    slot = new_slot(startsecs=startsecs)
    launch(slot)
    assert slot.next_deadline() == T0 + startsecs
    assert slot.tick(T0 + startsecs - 0.001) == []
    assert slot.state is S.STARTING
    assert slot.healthy(T0 + startsecs - 0.001) is False
    assert slot.tick(T0 + startsecs) == []
    assert slot.state is S.RUNNING
    assert slot.message == f"running, pid {PID}"
    assert slot.next_deadline() is None  # watchdog off: nothing more to do
    assert slot.healthy(T0 + startsecs) is True


def test_exit_just_before_startsecs_is_a_failed_start_just_after_is_not() -> None:
    early = new_slot()
    launch(early)
    early.tick(T0 + 0.99)
    assert early.state is S.STARTING
    early.exited(1, T0 + 0.99)
    assert early.message == "failed to start: exited with code 1 after 0.99 s; restarting in 1 s"

    late = new_slot()
    launch(late)
    late.tick(T0 + 1.0)
    assert late.state is S.RUNNING
    late.exited(1, T0 + 1.0)
    assert late.message == "exited with code 1; restarting in 1 s"

    # AUTORESTART Off: the same exit is retried before startsecs, final after it.
    early_off = new_slot(autorestart=AR.OFF)
    launch(early_off)
    early_off.exited(1, T0 + 0.99)
    assert early_off.state is S.BACKOFF
    late_off = new_slot(autorestart=AR.OFF)
    launch_running(late_off)
    late_off.exited(1, T0 + 1.0)
    assert (late_off.state, late_off.message) == (S.EXITED, "exited with code 1")


# (spawn time, startsecs): all but the last left the slot STARTING when tick() compared
# now - run_started >= startsecs and float rounding disagreed with next_deadline().
PROMOTE_CASES = [(12345.001, 0.3), (T0, 0.1), (0.7, 0.1), (98765.4321, 2.2), (3.3, 1.0)]


@pytest.mark.parametrize(("start", "startsecs"), PROMOTE_CASES)
def test_tick_at_next_deadline_promotes_for_any_startsecs(start: float, startsecs: float) -> None:
    slot = new_slot(startsecs=startsecs)
    assert slot.start(start) == [Spawn()]
    slot.spawned(PID, start)
    deadline = slot.next_deadline()
    assert deadline is not None
    assert slot.tick(deadline) == []
    assert slot.state is S.RUNNING
    assert slot.next_deadline() is None
