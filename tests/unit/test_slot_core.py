"""Unit tests of the pure slot life cycle (bgrscrpt_ioc.core.slot).

No processes and no event loop: ``now`` is a plain float (a fake monotonic
clock) and the process adapter is played by the tests themselves, answering
each ``Spawn`` with ``spawned``/``spawn_failed`` and each ``Kill`` with
``exited`` when they choose to.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from signal import SIGKILL, SIGTERM
from typing import Any

import pytest

from bgrscrpt_ioc.core.slot import (
    AUTORESTART_LABELS,
    Action,
    AutoRestart,
    Cause,
    Kill,
    Policy,
    RunEnded,
    Slot,
    SlotState,
    Spawn,
    describe_exit,
)

S = SlotState
AR = AutoRestart
PID = 4242
T0 = 100.0  # when every scripted run starts; far from 0.0 so stale zeros show up

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def new_slot(
    *, autorestart: AutoRestart = AR.ON_FAILURE, watchdog: float = 0.0, **policy: Any
) -> Slot:
    return Slot("BGRSCRPT_01", policy=Policy(**policy), autorestart=autorestart, watchdog=watchdog)


def launch(slot: Slot, now: float = T0, pid: int = PID) -> None:
    """Operator START answered by a successful spawn."""
    assert slot.start(now) == [Spawn()]
    assert slot.state is S.STARTING
    assert slot.spawned(pid, now) == []


def launch_running(slot: Slot, now: float = T0, pid: int = PID) -> None:
    launch(slot, now, pid)
    assert slot.tick(now + slot.policy.startsecs) == []
    assert slot.state is S.RUNNING


def slot_in(state: SlotState, autorestart: AutoRestart = AR.ON_FAILURE) -> Slot:
    """A slot with the default policy brought into ``state`` through real events.

    STARTING: spawned at T0.  RUNNING: promoted at T0+1.  BACKOFF: exited 1 at
    T0+10, retry at T0+11.  STOPPING: STOP at T0+10, SIGKILL due at T0+20.
    EXITED: exited 0 at T0+10.  FATAL: the automatic restart at T0+11 could not
    spawn.  ``autorestart`` is applied once the state is reached.
    """
    slot = new_slot()
    if state is S.STOPPED:
        pass
    elif state is S.STARTING:
        launch(slot)
    elif state is S.RUNNING:
        launch_running(slot)
    elif state is S.BACKOFF:
        launch_running(slot)
        assert slot.exited(1, T0 + 10) == [RunEnded(Cause.EXIT_CODE, 1)]
    elif state is S.STOPPING:
        launch_running(slot)
        assert slot.stop(T0 + 10) == [Kill(SIGTERM)]
    elif state is S.EXITED:
        launch_running(slot)
        assert slot.exited(0, T0 + 10) == [RunEnded(Cause.EXIT_CODE, 0)]
    elif state is S.FATAL:
        launch_running(slot)
        slot.exited(1, T0 + 10)
        assert slot.tick(T0 + 11) == [Spawn()]
        assert slot.spawn_failed("no script at /x.py", T0 + 11) == []
    assert slot.state is state
    slot.set_autorestart(autorestart)
    return slot


def fail_fast(slot: Slot, now: float, rc: int = 1, after: float = 0.1) -> list[Action]:
    """The current STARTING run spawns at ``now`` and dies ``after`` seconds later."""
    assert slot.state is S.STARTING
    assert slot.spawned(PID, now) == []
    return slot.exited(rc, now + after)


# ---------------------------------------------------------------------------
# enums and small helpers
# ---------------------------------------------------------------------------


def test_status_enum_order_is_the_mbbi_order() -> None:
    assert [s.name for s in SlotState] == [
        "STOPPED",
        "STARTING",
        "RUNNING",
        "BACKOFF",
        "STOPPING",
        "EXITED",
        "FATAL",
    ]
    assert [int(s) for s in SlotState] == list(range(7))


def test_autorestart_enum_and_labels() -> None:
    assert [(m.name, int(m), m.label) for m in AutoRestart] == [
        ("OFF", 0, "Off"),
        ("ON_FAILURE", 1, "On failure"),
        ("ALWAYS", 2, "Always"),
    ]
    assert AUTORESTART_LABELS == ("Off", "On failure", "Always")
    assert new_slot().autorestart is AR.ON_FAILURE  # the documented default


def test_set_autorestart_accepts_the_mbbo_index() -> None:
    slot = new_slot()
    slot.set_autorestart(2)  # type: ignore[arg-type]  # what a CA put delivers
    assert slot.autorestart is AR.ALWAYS
    with pytest.raises(ValueError):
        slot.set_autorestart(3)  # type: ignore[arg-type]


def test_cause_strings() -> None:
    assert (Cause.EXIT_CODE, Cause.SIGNAL, Cause.WATCHDOG, Cause.STOP, Cause.START_LIMIT) == (
        "exit-code",
        "signal",
        "watchdog",
        "stop",
        "start-limit",
    )


def test_default_policy_matches_spec() -> None:
    p = Policy()
    assert (p.startsecs, p.stop_timeout, p.backoff_initial) == (1.0, 10.0, 1.0)
    assert (p.start_limit_burst, p.start_limit_interval) == (5, 60.0)


@pytest.mark.parametrize(
    ("returncode", "text"),
    [
        (0, "exited with code 0"),
        (1, "exited with code 1"),
        (255, "exited with code 255"),
        (-9, "killed by SIGKILL"),
        (-15, "killed by SIGTERM"),
        (-11, "killed by SIGSEGV"),
        (-200, "killed by signal 200"),
    ],
)
def test_describe_exit(returncode: int, text: str) -> None:
    assert describe_exit(returncode) == text


def test_fresh_slot() -> None:
    slot = new_slot()
    assert (slot.state, slot.pid, slot.start_count, slot.exit_code) == (S.STOPPED, 0, 0, 0)
    assert (slot.registered, slot.message, slot.run_started) == (False, "", None)
    assert slot.next_deadline() is None
    assert slot.tick(1e6) == []


@pytest.mark.parametrize("state", list(SlotState))
def test_slot_in_builds_each_state(state: SlotState) -> None:
    slot = slot_in(state)
    assert slot.state is state
    live = state in (S.STARTING, S.RUNNING, S.STOPPING)
    assert (slot.pid == PID) is live
    assert (slot.pid == 0) is not live


# ---------------------------------------------------------------------------
# every state x every operator command
# ---------------------------------------------------------------------------

# (state, command, new state, actions, exact message or None when unchanged, start_count delta)
COMMANDS: list[tuple[SlotState, str, SlotState, list[Action], str | None, int]] = [
    (S.STOPPED, "start", S.STARTING, [Spawn()], None, +1),
    (S.STOPPED, "stop", S.STOPPED, [], "STOP ignored: not running (STOPPED)", 0),
    (S.STOPPED, "restart", S.STARTING, [Spawn()], None, +1),
    (S.STARTING, "start", S.STARTING, [], f"START ignored: already starting (pid {PID})", 0),
    (S.STARTING, "stop", S.STOPPING, [Kill(SIGTERM)], "stopping", 0),
    (S.STARTING, "restart", S.STOPPING, [Kill(SIGTERM)], "restarting", 0),
    (S.RUNNING, "start", S.RUNNING, [], f"START ignored: already running (pid {PID})", 0),
    (S.RUNNING, "stop", S.STOPPING, [Kill(SIGTERM)], "stopping", 0),
    (S.RUNNING, "restart", S.STOPPING, [Kill(SIGTERM)], "restarting", 0),
    (S.BACKOFF, "start", S.STARTING, [Spawn()], None, +1),
    (S.BACKOFF, "stop", S.STOPPED, [], "stopped (pending restart cancelled)", 0),
    (S.BACKOFF, "restart", S.STARTING, [Spawn()], None, +1),
    (S.STOPPING, "start", S.STOPPING, [], "will start once stopped", 0),
    (S.STOPPING, "stop", S.STOPPING, [], "already stopping", 0),
    (S.STOPPING, "restart", S.STOPPING, [], "will start once stopped", 0),
    (S.EXITED, "start", S.STARTING, [Spawn()], None, +1),
    (S.EXITED, "stop", S.EXITED, [], "STOP ignored: not running (EXITED)", 0),
    (S.EXITED, "restart", S.STARTING, [Spawn()], None, +1),
    (S.FATAL, "start", S.STARTING, [Spawn()], None, +1),
    (S.FATAL, "stop", S.FATAL, [], "STOP ignored: not running (FATAL)", 0),
    (S.FATAL, "restart", S.STARTING, [Spawn()], None, +1),
]


def test_command_table_is_complete() -> None:
    assert {(s, c) for s, c, *_ in COMMANDS} == {
        (s, c) for s in SlotState for c in ("start", "stop", "restart")
    }


@pytest.mark.parametrize(
    ("state", "command", "new_state", "actions", "message", "delta"),
    COMMANDS,
    ids=[f"{s.name}-{c}" for s, c, *_ in COMMANDS],
)
def test_operator_command(
    state: SlotState,
    command: str,
    new_state: SlotState,
    actions: list[Action],
    message: str | None,
    delta: int,
) -> None:
    slot = slot_in(state)
    before_msg, before_cnt, before_pid = slot.message, slot.start_count, slot.pid
    now = T0 + 15
    assert getattr(slot, command)(now) == actions
    assert slot.state is new_state
    assert slot.message == (before_msg if message is None else message)
    assert slot.start_count == before_cnt + delta
    if actions == [Spawn()]:
        # a new run is being spawned: no pid until ``spawned`` reports one
        assert (slot.pid, slot.run_started) == (0, None)
        assert slot.next_deadline() is None
    else:
        assert slot.pid == before_pid


@pytest.mark.parametrize("command", ["start", "restart"])
@pytest.mark.parametrize("state", [S.STOPPED, S.BACKOFF, S.EXITED, S.FATAL])
def test_operator_start_then_spawned_reaches_running(state: SlotState, command: str) -> None:
    slot = slot_in(state)
    now = T0 + 15
    assert getattr(slot, command)(now) == [Spawn()]
    assert slot.spawned(777, now) == []
    assert (slot.state, slot.pid, slot.message) == (S.STARTING, 777, "started, pid 777")
    assert slot.tick(now + 1.0) == []
    assert (slot.state, slot.message) == (S.RUNNING, "running, pid 777")


def test_stop_in_backoff_goes_straight_to_stopped_and_never_restarts() -> None:
    slot = slot_in(S.BACKOFF)
    assert slot.next_deadline() == T0 + 11
    assert slot.stop(T0 + 10.5) == []
    assert slot.state is S.STOPPED
    assert slot.next_deadline() is None
    assert slot.tick(T0 + 11) == []
    assert slot.tick(T0 + 1000) == []
    assert slot.state is S.STOPPED
    assert slot.exit_code == 1  # the last run's status stays visible
    assert slot.start_count == 1


def test_start_queued_behind_stop_runs_when_the_script_exits() -> None:
    slot = slot_in(S.STOPPING)
    assert slot.start(T0 + 11) == []
    assert slot.exited(-15, T0 + 12) == [RunEnded(Cause.STOP, -15), Spawn()]
    assert slot.state is S.STARTING
    assert slot.start_count == 2
    assert slot.exit_code == -15
    assert slot.next_deadline() is None  # no timer until spawned
    assert slot.spawned(99, T0 + 12) == []
    assert slot.next_deadline() == T0 + 13


@pytest.mark.parametrize("leftover", ["start", "restart", "exit"])
@pytest.mark.parametrize(
    ("state", "how"),
    [(S.STOPPED, "start"), (S.EXITED, "restart"), (S.FATAL, "start"), (S.BACKOFF, "tick")],
)
def test_spawn_clears_a_queued_then(state: SlotState, how: str, leftover: str) -> None:
    # _then belongs to STOPPING only; a new run must not inherit a stale one.
    slot = slot_in(state)
    slot._then = leftover
    actions = slot.tick(T0 + 11) if how == "tick" else getattr(slot, how)(T0 + 11)
    assert actions == [Spawn()]
    assert slot._then == ""


@pytest.mark.parametrize("queue", ["start", "restart"])
def test_stop_after_queued_start_cancels_it(queue: str) -> None:
    slot = slot_in(S.STOPPING)
    assert getattr(slot, queue)(T0 + 11) == []
    assert slot.stop(T0 + 12) == []
    assert slot.message == "already stopping"
    assert slot.exited(-15, T0 + 13) == [RunEnded(Cause.STOP, -15)]
    assert slot.state is S.STOPPED
    assert slot.message == "stopped (killed by SIGTERM)"


@pytest.mark.parametrize("state", [S.STARTING, S.RUNNING])
def test_restart_stops_then_starts(state: SlotState) -> None:
    slot = slot_in(state)
    assert slot.restart(T0 + 0.5) == [Kill(SIGTERM)]
    assert (slot.state, slot.message) == (S.STOPPING, "restarting")
    assert slot.exited(-15, T0 + 0.6) == [RunEnded(Cause.STOP, -15), Spawn()]
    assert slot.state is S.STARTING
    # Until the spawn is confirmed, MSG (and the log's exit line) says how the run ended.
    assert slot.message == "stopped (killed by SIGTERM); starting again"
    assert slot.start_count == 2
    assert slot.spawned(PID + 1, T0 + 0.6) == []
    assert slot.pid == PID + 1


@pytest.mark.parametrize("mode", list(AutoRestart))
def test_stop_disables_automatic_restart_whatever_the_mode(mode: AutoRestart) -> None:
    slot = slot_in(S.RUNNING, autorestart=mode)
    slot.stop(T0 + 5)
    assert slot.exited(1, T0 + 6) == [RunEnded(Cause.STOP, 1)]
    assert slot.state is S.STOPPED
    assert slot.next_deadline() is None
    assert slot.tick(T0 + 1000) == []
    assert slot.state is S.STOPPED


# ---------------------------------------------------------------------------
# STOP: SIGTERM, then SIGKILL exactly at stop_timeout
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(("timeout", "shown"), [(10.0, "10"), (2.5, "2.5"), (0.25, "0.25")])
def test_stop_escalates_to_sigkill_exactly_at_stop_timeout(timeout: float, shown: str) -> None:
    slot = new_slot(stop_timeout=timeout)
    launch_running(slot)
    stop_at = T0 + 5
    assert slot.stop(stop_at) == [Kill(SIGTERM)]
    assert slot.next_deadline() == stop_at + timeout
    assert slot.tick(stop_at + timeout - 0.001) == []
    assert slot.state is S.STOPPING
    assert slot.tick(stop_at + timeout) == [Kill(SIGKILL)]
    assert slot.message == f"did not stop within {shown} s: SIGKILL"
    assert slot.state is S.STOPPING
    assert slot.next_deadline() is None
    assert slot.tick(stop_at + 10 * timeout) == []  # SIGKILL is sent once
    assert slot.exited(-9, stop_at + timeout + 0.01) == [RunEnded(Cause.STOP, -9)]
    assert (slot.state, slot.exit_code, slot.message) == (
        S.STOPPED,
        -9,
        "stopped (killed by SIGKILL)",
    )


def test_script_that_exits_on_sigterm_gets_no_sigkill() -> None:
    slot = slot_in(S.STOPPING)
    assert slot.exited(-15, T0 + 11) == [RunEnded(Cause.STOP, -15)]
    assert slot.next_deadline() is None
    assert slot.tick(T0 + 20) == []
    assert slot.tick(T0 + 30) == []


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


# ---------------------------------------------------------------------------
# random walks: invariants over long event sequences (a faithful fake adapter)
# ---------------------------------------------------------------------------

LIVE = (S.STARTING, S.RUNNING, S.STOPPING)


class FakeAdapter:
    """Plays the process adapter: spawns synchronously, like the real runner."""

    def __init__(self, slot: Slot, rng: random.Random) -> None:
        self.slot, self.rng = slot, rng
        self.now = T0
        self.alive = False
        self.spawns = 0
        self.ended: list[RunEnded] = []
        self.next_pid = 1000

    def apply(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Spawn):
                assert not self.alive, "Spawn while a process is alive"
                if self.rng.random() < 0.1:
                    self.apply(self.slot.spawn_failed("cannot start", self.now))
                else:
                    self.alive = True
                    self.spawns += 1
                    self.next_pid += 1
                    self.apply(self.slot.spawned(self.next_pid, self.now))
            elif isinstance(action, Kill):
                assert self.alive, "Kill with no process"
                assert action.signum in (SIGTERM, SIGKILL)
            else:
                assert isinstance(action, RunEnded)
                self.ended.append(action)
                if action.cause == Cause.START_LIMIT:
                    assert self.slot.state is S.FATAL

    def advance(self, target: float) -> None:
        for _ in range(1000):
            deadline = self.slot.next_deadline()
            if deadline is None or deadline > target:
                break
            self.now = max(self.now, deadline)
            before = (self.slot.state, deadline)
            self.apply(self.slot.tick(self.now))
            # every deadline acts when reached: no nudging past it
            assert (self.slot.state, self.slot.next_deadline()) != before, "no progress"
            self.check()
        else:
            raise AssertionError("tick loop did not settle")
        self.now = max(self.now, target)

    def exit(self, rc: int) -> None:
        if self.alive:
            self.alive = False
            self.apply(self.slot.exited(rc, self.now))

    def check(self) -> None:
        slot = self.slot
        assert (slot.state in LIVE) is self.alive, (slot.state, self.alive)
        assert (slot.pid != 0) is self.alive
        assert (slot.run_started is not None) is self.alive
        assert slot.start_count == self.spawns
        assert len(self.ended) == self.spawns - self.alive
        assert not slot.registered or self.alive
        assert not slot.healthy(self.now) or slot.state is S.RUNNING
        assert slot.uptime(self.now) >= 0
        assert slot._then == "" or slot.state is S.STOPPING
        deadline = slot.next_deadline()
        if slot.state in (S.STOPPED, S.EXITED, S.FATAL):
            assert deadline is None
        if slot.state in (S.STARTING, S.BACKOFF):
            assert deadline is not None


@pytest.mark.parametrize("seed", range(40))
def test_random_walk_keeps_invariants(seed: int) -> None:
    rng = random.Random(seed)
    slot = new_slot(
        startsecs=1.0,
        stop_timeout=3.0,
        backoff_initial=0.5,
        backoff_max=4.0,
        start_limit_burst=4,
        start_limit_interval=20.0,
    )
    fake = FakeAdapter(slot, rng)
    for _ in range(300):
        event = rng.choice(
            ["start", "stop", "restart", "exit", "exit", "notify", "mode", "watchdog"]
            + ["wait"] * 6
        )
        if event in ("start", "stop", "restart"):
            fake.apply(getattr(slot, event)(fake.now))
        elif event == "exit":
            fake.exit(rng.choice([0, 1, 2, -9, -15, -11]))
        elif event == "notify":
            fields = rng.choice([{"READY": "1"}, {"WATCHDOG": "1"}, {"STATUS": "x"}])
            fake.apply(slot.notified(fields, fake.now))
        elif event == "mode":
            slot.set_autorestart(rng.choice(list(AutoRestart)))
        elif event == "watchdog":
            slot.set_watchdog(rng.choice([0.0, 0.5, 2.0, 5.0]), fake.now)
        else:
            fake.advance(fake.now + rng.choice([0.0, 0.05, 0.3, 1.0, 2.5, 7.0, 30.0]))
        fake.check()


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
