"""The watch life cycle (core/watch.py) with a fake clock: no I/O, no loop."""

from __future__ import annotations

import math

import pytest

from bgrscrpt_ioc.core.watch import (
    ALARM_LABELS,
    Level,
    Outcome,
    Restart,
    WatchCore,
    WatchPolicy,
    WatchRefused,
    WatchState,
)

PV = "DEV:VALUE"
OTHER = "DEV:OTHER"
POLICY = WatchPolicy(
    delay=10.0,
    verify_timeout=30.0,
    max_restarts=3,
    window=3600.0,
    backoff=5.0,
    backoff_max=20.0,
    connect_grace=2.0,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self, advance: float = 0.0) -> float:
        self.now += advance
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def make(clock: Clock, policy: WatchPolicy = POLICY, pvs=(PV,), **kw) -> WatchCore:
    return WatchCore(policy, list(pvs), clock(), **kw)


def good(core: WatchCore, clock: Clock, name: str = PV, advance: float = 0.0):
    return core.update(clock(advance), name, connected=True, severity=0)


def bad(core: WatchCore, clock: Clock, name: str = PV, severity: int = 3, advance: float = 0.0):
    return core.update(clock(advance), name, connected=True, severity=severity)


def gone(core: WatchCore, clock: Clock, name: str = PV, advance: float = 0.0):
    return core.update(clock(advance), name, connected=False)


def restarts(actions) -> list[Restart]:
    return [a for a in actions if isinstance(a, Restart)]


def outcomes(actions) -> list[str]:
    return [a.kind for a in actions if isinstance(a, Outcome)]


def fail_one_restart(core: WatchCore, clock: Clock) -> list:
    """From RESTARTING: restart sent, PV stays INVALID, verification times out."""
    assert core.state is WatchState.RESTARTING
    core.restart_sent(clock(), "restarted X")
    bad(core, clock)  # the new IOC is as sick as the old
    return core.tick(clock(POLICY.verify_timeout))


# ---- the states and labels --------------------------------------------------------


def test_state_and_alarm_labels_are_the_spec_order():
    assert [s.name for s in WatchState] == [
        "DISABLED", "OK", "PENDING", "RESTARTING", "VERIFYING", "FAILED", "LOCKOUT",
    ]  # fmt: skip
    assert ALARM_LABELS == ("NO_ALARM", "MINOR", "MAJOR", "INVALID", "DISCONNECTED")


def test_needs_a_pv():
    with pytest.raises(ValueError):
        WatchCore(POLICY, [], 0.0)


def test_starts_ok_or_disabled(clock):
    assert make(clock).state is WatchState.OK
    assert make(clock, enabled=False).state is WatchState.DISABLED
    locked = make(clock, locked_out=True, history=[clock() - 10] * 3)
    assert locked.state is WatchState.LOCKOUT
    assert "LOCKOUT" in locked.msg


# ---- trigger and delay ----------------------------------------------------------


def test_condition_must_hold_for_delay(clock):
    core = make(clock)
    good(core, clock)
    assert bad(core, clock) == []
    assert core.state is WatchState.PENDING
    assert core.next_deadline() == pytest.approx(clock() + 10.0)
    assert "restart in 10.0 s" in core.msg
    assert core.tick(clock(9.9)) == []
    actions = core.tick(clock(0.1))
    assert restarts(actions) == [Restart(manual=False, reason=f"{PV} INVALID")]
    assert core.state is WatchState.RESTARTING


def test_condition_clearing_during_delay_goes_back_to_ok(clock):
    core = make(clock)
    bad(core, clock)
    assert core.state is WatchState.PENDING
    assert good(core, clock, advance=4.0) == []
    assert core.state is WatchState.OK
    assert "cleared after 4.0 s" in core.msg
    # and the delay starts over
    bad(core, clock, advance=1.0)
    assert core.tick(clock(9.0)) == []
    assert restarts(core.tick(clock(1.0)))


def test_delay_zero_restarts_on_the_update_itself(clock):
    core = make(clock, WatchPolicy(delay=0.0))
    good(core, clock)
    assert restarts(bad(core, clock))


@pytest.mark.parametrize(
    ("threshold", "severity", "triggers"),
    [
        (Level.INVALID, 2, False),
        (Level.INVALID, 3, True),
        (Level.MAJOR, 1, False),
        (Level.MAJOR, 2, True),
        (Level.MAJOR, 3, True),
        (Level.MINOR, 1, True),
        (Level.MINOR, 0, False),
    ],
)
def test_severity_threshold(clock, threshold, severity, triggers):
    core = make(clock, WatchPolicy(severity=threshold, delay=0.0))
    assert bool(restarts(bad(core, clock, severity=severity))) is triggers


def test_trigger_values(clock):
    core = make(clock, WatchPolicy(delay=0.0))
    assert restarts(core.update(clock(), PV, connected=True, severity=0, value_matches=True))


def test_disconnected_triggers_only_when_asked(clock):
    core = make(clock, WatchPolicy(delay=0.0, disconnected=False))
    good(core, clock)
    assert gone(core, clock) == []
    assert core.state is WatchState.OK
    assert core.alarm is Level.DISCONNECTED
    core = make(clock, WatchPolicy(delay=0.0, disconnected=True))
    good(core, clock)
    assert restarts(gone(core, clock)) == [Restart(manual=False, reason=f"{PV} disconnected")]


def test_a_pv_never_connected_counts_after_the_grace(clock):
    core = make(clock, WatchPolicy(delay=0.0, connect_grace=2.0))
    assert core.tick(clock(1.9)) == []
    assert core.next_deadline() == pytest.approx(clock() + 0.1)
    actions = core.tick(clock(0.1))
    assert restarts(actions) == [Restart(manual=False, reason=f"{PV} disconnected")]


def test_alarm_is_the_worst_pv(clock):
    core = make(clock, pvs=(PV, OTHER))
    good(core, clock)
    good(core, clock, OTHER)
    assert core.alarm is Level.NO_ALARM
    bad(core, clock, OTHER, severity=1)
    assert core.alarm is Level.MINOR
    bad(core, clock, PV, severity=3)
    assert core.alarm is Level.INVALID
    gone(core, clock, OTHER)
    assert core.alarm is Level.DISCONNECTED


# ---- restart and verification -----------------------------------------------------


def restarting(clock, policy=POLICY, **kw) -> WatchCore:
    core = make(clock, policy, **kw)
    good(core, clock)
    bad(core, clock)
    assert restarts(core.tick(clock(policy.delay)))
    return core


def test_no_second_restart_while_one_is_under_way(clock):
    core = restarting(clock)
    assert core.tick(clock(1000.0)) == []
    assert bad(core, clock) == []
    with pytest.raises(WatchRefused, match="under way"):
        core.manual_restart(clock())
    with pytest.raises(WatchRefused):
        core.set_enabled(clock(), False)
    assert core.state is WatchState.RESTARTING


def test_recovered_when_every_pv_is_heard_from_and_healthy(clock):
    core = restarting(clock, pvs=(PV, OTHER))
    began = clock()
    assert core.restart_sent(clock(1.0), "restarted ZF") == []
    assert core.state is WatchState.VERIFYING
    assert core.restart_count == 1
    gone(core, clock, PV)
    gone(core, clock, OTHER)
    good(core, clock, OTHER, advance=1.0)
    assert core.state is WatchState.VERIFYING
    actions = good(core, clock, PV, advance=1.2)
    assert outcomes(actions) == ["recovered"]
    assert core.state is WatchState.OK
    assert core.msg == f"restarted ZF, recovered in {clock() - began:.1f} s"


def test_stale_healthy_state_is_not_taken_for_recovery(clock):
    # The PV was INVALID when the restart went out: only a new update can clear it.
    core = restarting(clock)
    core.restart_sent(clock(), "restarted ZF")
    assert core.tick(clock(1.0)) == []
    assert core.state is WatchState.VERIFYING


def test_manual_restart_of_a_healthy_watch_needs_one_fresh_update(clock):
    core = make(clock, pvs=(PV, OTHER))
    good(core, clock)
    good(core, clock, OTHER)
    assert restarts(core.manual_restart(clock())) == [
        Restart(manual=True, reason="restart by hand")
    ]
    core.restart_sent(clock(), "restarted ZF")
    assert core.state is WatchState.VERIFYING
    good(core, clock, advance=0.5)
    assert core.state is WatchState.OK


def test_verify_timeout_fails_and_backs_off_doubling_to_the_cap(clock):
    core = restarting(clock, locked_out=False)
    policy = WatchPolicy(**{**POLICY.__dict__, "max_restarts": 100})
    core.policy = policy
    waits = []
    for _ in range(4):
        actions = fail_one_restart(core, clock)
        assert outcomes(actions) == ["failed"]
        assert core.state is WatchState.FAILED
        wait = core.next_deadline() - clock()
        waits.append(wait)
        assert core.tick(clock(wait - 0.01)) == []
        assert restarts(core.tick(clock(0.01)))
    assert waits == [5.0, 10.0, 20.0, 20.0]
    assert core.state is WatchState.RESTARTING


def test_failure_msg_says_what_and_when(clock):
    core = restarting(clock)
    fail_one_restart(core, clock)
    assert core.msg == f"restarted X: not recovered within 30 s ({PV}); next attempt in 5 s"


def test_a_success_resets_the_backoff(clock):
    core = restarting(clock)
    fail_one_restart(core, clock)
    assert restarts(core.tick(clock(5.0)))
    core.restart_sent(clock(), "restarted X")
    good(core, clock)
    assert core.state is WatchState.OK
    assert core.failures == 0
    bad(core, clock)
    assert restarts(core.tick(clock(10.0)))
    fail_one_restart(core, clock)
    assert core.next_deadline() - clock() == 5.0


def test_failed_recovers_on_its_own(clock):
    core = restarting(clock)
    fail_one_restart(core, clock)
    actions = good(core, clock)
    assert outcomes(actions) == ["recovered"]
    assert core.state is WatchState.OK


def test_restart_that_could_not_be_sent_is_failed_and_counts(clock):
    core = restarting(clock)
    actions = core.restart_failed(clock(), "procServ at 127.0.0.1:1 refused the connection")
    assert outcomes(actions) == ["failed"]
    assert core.state is WatchState.FAILED
    assert core.msg.startswith("procServ at 127.0.0.1:1 refused the connection; next attempt in")
    assert core.restart_count == 1
    assert len(core.history) == 1


def test_a_restart_that_reached_nothing_is_retried_and_never_locks_out(clock):
    """A peer on a host cut off from this one: every attempt fails before it
    reaches anything that could restart the IOC. The watch retries after
    ``backoff`` for as long as that lasts, and acts once the peer answers."""
    core = restarting(clock)
    for attempt in range(1, 3 * POLICY.max_restarts):
        core.restart_failed(clock(), "peer P: does not connect", reached=False)
        assert core.state is WatchState.FAILED, attempt
        assert core.msg.endswith(f"; next attempt in {POLICY.backoff:g} s"), core.msg
        assert restarts(core.tick(clock(POLICY.backoff))), attempt
        assert core.state is WatchState.RESTARTING
    assert core.restart_count == 3 * POLICY.max_restarts - 1  # RESTART_CNT shows each
    assert core.history == []
    # The one that reaches the peer counts, as every restart does.
    core.restart_sent(clock(), "restarted X")
    assert len(core.history) == 1


def test_target_dying_again_during_verification(clock):
    core = restarting(clock)
    core.restart_sent(clock(), "restarted X")
    good(core, clock)
    assert core.state is WatchState.OK
    # and again: a new fault is a new PENDING, not an instant restart
    gone(core, clock)
    assert core.state is WatchState.PENDING


def test_reports_outside_restarting_are_ignored(clock):
    core = make(clock)
    assert core.restart_sent(clock(), "x") == []
    assert core.restart_failed(clock(), "x") == []
    assert core.state is WatchState.OK
    assert core.restart_count == 0


# ---- window and lockout ------------------------------------------------------------


def test_max_restarts_within_window_locks_out(clock):
    core = restarting(clock)
    fail_one_restart(core, clock)
    assert restarts(core.tick(clock(5.0)))
    fail_one_restart(core, clock)
    assert restarts(core.tick(clock(10.0)))
    fail_one_restart(core, clock)
    actions = core.tick(clock(20.0))
    assert restarts(actions) == []
    assert outcomes(actions) == ["lockout"]
    assert core.state is WatchState.LOCKOUT
    assert core.msg.startswith("LOCKOUT: 3 restarts in 3600 s")
    assert core.next_deadline() == math.inf
    assert core.tick(clock(10_000.0)) == []
    assert bad(core, clock) == []


def test_old_restarts_fall_out_of_the_window(clock):
    # At the tick (10 s on) these are 3589, 3580 and 20 s old: all inside the window.
    core = make(clock, history=[clock() - 3579.0, clock() - 3570.0, clock() - 10.0])
    bad(core, clock)
    assert outcomes(core.tick(clock(10.0))) == ["lockout"]
    core = make(clock, history=[clock() - 3595.0, clock() - 3590.0, clock() - 10.0])
    bad(core, clock)
    assert restarts(core.tick(clock(10.0)))


def test_enable_clears_lockout_and_its_count(clock):
    core = make(clock, locked_out=True, history=[clock()] * 3, failures=3)
    actions = core.set_enabled(clock(1.0), True)
    assert outcomes(actions)[0] == "cleared"
    assert core.history == []
    assert core.failures == 0
    assert core.state is WatchState.OK
    bad(core, clock)
    assert restarts(core.tick(clock(10.0)))


def test_enable_on_lockout_with_the_fault_still_there_restarts_after_the_delay(clock):
    core = make(clock, locked_out=True, history=[clock()] * 3)
    bad(core, clock)
    core.set_enabled(clock(), True)
    assert core.state is WatchState.PENDING


def test_manual_restart_works_in_lockout_but_not_disabled(clock):
    core = make(clock, locked_out=True, history=[clock()] * 3)
    assert restarts(core.manual_restart(clock()))
    core = make(clock, enabled=False)
    with pytest.raises(WatchRefused, match="disabled"):
        core.manual_restart(clock())


def test_disable_and_enable(clock):
    core = make(clock)
    bad(core, clock)
    assert core.set_enabled(clock(), False) == []
    assert core.state is WatchState.DISABLED
    assert core.tick(clock(100.0)) == []
    assert bad(core, clock) == []
    assert core.next_deadline() == math.inf
    core.set_enabled(clock(), True)
    assert core.state is WatchState.PENDING  # the condition holds: the delay starts now
    assert core.set_enabled(clock(), True) == []


# ---- dry run ---------------------------------------------------------------------------


def test_dry_run_counts_nothing(clock):
    core = restarting(clock)
    core.restart_sent(clock(), "DRYRUN: would restart X", dry_run=True)
    assert core.state is WatchState.VERIFYING
    assert core.restart_count == 0
    assert core.history == []
    bad(core, clock)
    core.tick(clock(30.0))
    assert core.state is WatchState.FAILED
    assert core.restart_count == 0
