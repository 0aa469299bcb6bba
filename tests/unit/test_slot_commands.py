"""The slot core (bgrscrpt_ioc.core.slot): its states and labels, every operator
command in every state, and STOP's escalation from SIGTERM to SIGKILL.

A fake monotonic clock and the tests as the process adapter: see slot_helpers.
"""

from __future__ import annotations

from signal import SIGKILL, SIGTERM

import pytest

from bgrscrpt_ioc.core.slot import (
    AUTORESTART_LABELS,
    Action,
    AutoRestart,
    Cause,
    Kill,
    Policy,
    RunEnded,
    SlotState,
    Spawn,
    describe_exit,
)
from tests.unit.slot_helpers import (
    AR,
    PID,
    T0,
    S,
    launch_running,
    new_slot,
    slot_in,
)

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
