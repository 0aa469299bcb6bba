"""Every deadline the pure cores offer is acted on when reached, however late.

A runner sleeps until ``next_deadline()`` and then ticks. If a tick at (or after)
that time left the deadline where it was, the runner would wake at once, tick,
find the same deadline in the past and go round again without ever yielding:
the whole IOC frozen at 100 % CPU. These tests put each core in every state,
tick it on time and late (a loop that was blocked, a machine that was
suspended), and check that it always moves on: a deadline in the past fires,
then re-arms in the future or goes away.
"""

from __future__ import annotations

import copy
import math
import random
from signal import SIGKILL, SIGTERM
from typing import Any

import pytest

from bgrscrpt_ioc.core.slot import AutoRestart, Kill, Policy, Slot, SlotState, Spawn
from bgrscrpt_ioc.core.watch import Restart, WatchCore, WatchPolicy, WatchState

LATENESS = [0.0, 1e-9, 0.3, 7.0, 1e4]
"""How long after its deadline a tick comes: on time, a hair late, a blocked loop, a suspend."""

MAX_TICKS = 4
"""Ticks at one instant until nothing is due (a zero timeout may chain: fire, re-arm, fire)."""


def settle_watch(core: WatchCore, now: float) -> None:
    """Tick at ``now`` while something is due; each tick must change something."""
    for _ in range(MAX_TICKS):
        deadline = core.next_deadline()
        if deadline > now:
            return
        before = (core.state, deadline, core.msg)
        actions = core.tick(now)
        if any(isinstance(a, Restart) for a in actions):
            assert core.state in (WatchState.RESTARTING,)
        assert (core.state, core.next_deadline(), core.msg) != before, (
            f"tick at {now} left {core.state.name} due at {deadline} unchanged"
        )
    raise AssertionError(f"{core.state.name}: still due at {core.next_deadline()} <= {now}")


def settle_slot(slot: Slot, now: float, pid: int = 4243) -> list:
    """Tick at ``now`` while something is due, answering each Spawn at once (as the runner does)."""
    actions: list = []
    for _ in range(MAX_TICKS):
        deadline = slot.next_deadline()
        if deadline is None or deadline > now:
            return actions
        before = (slot.state, deadline, slot.message)
        new = slot.tick(now)
        actions += new
        if Spawn() in new:
            slot.spawned(pid, now)
        assert (slot.state, slot.next_deadline(), slot.message) != before, (
            f"tick at {now} left {slot.state.name} due at {deadline} unchanged"
        )
    raise AssertionError(f"{slot.state.name}: still due at {slot.next_deadline()} <= {now}")


# ---- the watch core ------------------------------------------------------------------

T0 = 1000.0
PV, OTHER = "DEV:VALUE", "DEV:OTHER"


def _policy(**kw: object) -> WatchPolicy:
    base: dict[str, Any] = dict(
        delay=10.0,
        verify_timeout=30.0,
        max_restarts=3,
        window=3600.0,
        backoff=5.0,
        backoff_max=20.0,
        connect_grace=5.0,
    )
    base.update(kw)
    return WatchPolicy(**base)


def _watch(policy: WatchPolicy, pvs=(PV,), **kw: object) -> WatchCore:
    return WatchCore(policy, list(pvs), T0, **kw)  # type: ignore[arg-type]


def _restarting(policy: WatchPolicy) -> WatchCore:
    core = _watch(policy)
    core.update(T0, PV, connected=True, severity=3)
    core.tick(T0 + policy.delay)
    assert core.state is WatchState.RESTARTING
    return core


def _verifying(policy: WatchPolicy) -> WatchCore:
    core = _restarting(policy)
    core.restart_sent(T0 + policy.delay + 1, "restarted X")
    assert core.state is WatchState.VERIFYING
    return core


def _failed(policy: WatchPolicy) -> WatchCore:
    core = _restarting(policy)
    core.restart_failed(T0 + policy.delay + 1, "procServ at h:1 refused")
    assert core.state is WatchState.FAILED
    return core


def _lockout(policy: WatchPolicy) -> WatchCore:
    core = _watch(policy, locked_out=True, history=[T0 - 1.0] * 3)
    assert core.state is WatchState.LOCKOUT
    return core


def _pending_with_unseen_pv(policy: WatchPolicy) -> WatchCore:
    core = _watch(policy, pvs=(PV, OTHER))
    core.update(T0, PV, connected=True, severity=3)  # OTHER never connects
    assert core.state is WatchState.PENDING
    return core


WATCH_CASES = {
    # The reported freeze: a PV that never connects, disconnected=false.
    "OK-never-connected-not-triggering": lambda: _watch(_policy(disconnected=False)),
    # The other one: disconnected=true and the target down at start.
    "OK-never-connected-triggering": lambda: _watch(_policy(disconnected=True)),
    "OK-connected": lambda: _connected_ok(_policy()),
    "DISABLED": lambda: _watch(_policy(), enabled=False),
    "PENDING": lambda: _pending(_policy()),
    "PENDING-unseen-pv": lambda: _pending_with_unseen_pv(_policy()),
    "PENDING-unseen-pv-not-triggering": lambda: _pending_with_unseen_pv(
        _policy(disconnected=False)
    ),
    "RESTARTING": lambda: _restarting(_policy()),
    "VERIFYING": lambda: _verifying(_policy()),
    "FAILED": lambda: _failed(_policy()),
    "FAILED-no-backoff": lambda: _failed(_policy(backoff=0.0, backoff_max=0.0)),
    "LOCKOUT": lambda: _lockout(_policy()),
    "PENDING-zero-delay-unseen": lambda: _watch(_policy(delay=0.0), pvs=(PV, OTHER)),
}


def _connected_ok(policy: WatchPolicy) -> WatchCore:
    core = _watch(policy)
    core.update(T0, PV, connected=True, severity=0)
    return core


def _pending(policy: WatchPolicy) -> WatchCore:
    core = _connected_ok(policy)
    core.update(T0 + 1, PV, connected=True, severity=3)
    assert core.state is WatchState.PENDING
    return core


def test_watch_cases_cover_every_state() -> None:
    assert {f().state for f in WATCH_CASES.values()} == set(WatchState)


@pytest.mark.parametrize("late", LATENESS)
@pytest.mark.parametrize("case", list(WATCH_CASES))
def test_watch_deadline_in_the_past_fires_then_rearms(case: str, late: float) -> None:
    core = WATCH_CASES[case]()
    deadline = core.next_deadline()
    # A deadline, once offered, is in the future or it is acted on: check both the
    # deadline it offers now and a tick long after the start (the grace long gone).
    now = (deadline if math.isfinite(deadline) else T0 + 100.0) + late
    settle_watch(core, now)
    assert core.next_deadline() > now
    # and again, later still: nothing stays due
    settle_watch(core, now + 50.0 + late)
    assert core.next_deadline() > now + 50.0 + late


def test_watch_never_connected_pv_offers_no_deadline_once_the_grace_is_spent() -> None:
    """The repro: ``pvs=["NOSUCH:PV"] disconnected=false``; the grace ends at T0+5."""
    core = _watch(_policy(disconnected=False))
    assert core.next_deadline() == math.inf  # nothing a tick could do: no wake-ups at all
    core.tick(T0 + 6.0)
    assert core.state is WatchState.OK
    assert core.next_deadline() == math.inf


def test_watch_target_down_at_start_waits_for_the_delay_then_restarts() -> None:
    """``disconnected = true`` and the target down: grace, then `delay`, then a restart."""
    policy = _policy(disconnected=True, delay=30.0)
    core = _watch(policy)
    assert core.next_deadline() == T0 + 5.0
    assert core.tick(T0 + 5.0) == []
    assert core.state is WatchState.PENDING
    assert core.next_deadline() == T0 + 35.0  # not the spent grace
    assert core.tick(T0 + 20.0) == []
    assert core.next_deadline() == T0 + 35.0
    actions = core.tick(T0 + 35.0)
    assert [type(a) for a in actions] == [Restart]
    assert core.state is WatchState.RESTARTING


@pytest.mark.parametrize(
    ("since", "delay"), [(1000.1, 0.3), (0.1, 0.2), (123456.789, 0.7), (3.3, 1e-9)]
)
def test_watch_tick_at_the_pending_deadline_restarts_whatever_the_rounding(
    since: float, delay: float
) -> None:
    core = WatchCore(_policy(delay=delay), [PV], since)
    core.update(since, PV, connected=True, severity=3)
    deadline = core.next_deadline()
    assert [type(a) for a in core.tick(deadline)] == [Restart]


@pytest.mark.parametrize("seed", range(30))
def test_watch_random_walk_with_late_ticks_always_moves_on(seed: int) -> None:
    rng = random.Random(seed)
    policy = _policy(
        delay=rng.choice([0.0, 0.5, 3.0]),
        verify_timeout=rng.choice([0.5, 4.0]),
        backoff=rng.choice([0.0, 1.0]),
        backoff_max=4.0,
        max_restarts=rng.choice([1, 3]),
        window=60.0,
        connect_grace=2.0,
        disconnected=rng.random() < 0.7,
    )
    core = _watch(policy, pvs=(PV, OTHER))
    now = T0
    for _ in range(300):
        event = rng.choice(["pv", "pv", "wait", "wait", "late", "enable", "manual", "report"])
        try:
            if event == "pv":
                name = rng.choice([PV, OTHER])
                if rng.random() < 0.3:
                    core.update(now, name, connected=False)
                else:
                    core.update(now, name, connected=True, severity=rng.choice([0, 0, 1, 3]))
            elif event == "enable":
                core.set_enabled(now, rng.random() < 0.8)
            elif event == "manual":
                core.manual_restart(now)
            elif event == "report" and core.state is WatchState.RESTARTING:
                if rng.random() < 0.5:
                    core.restart_sent(now, "restarted X", dry_run=rng.random() < 0.2)
                else:
                    core.restart_failed(now, "refused")
        except ValueError:
            pass  # refused puts change nothing
        if event == "wait":
            now += rng.choice([0.0, 0.1, 0.7, 2.5])
        elif event == "late":
            deadline = core.next_deadline()
            if math.isfinite(deadline):
                now = max(now, deadline + rng.choice([0.0, 1e-9, 3.0, 500.0]))
        # What the runner does after every event: tick while something is due.
        settle_watch(core, now)
        assert core.next_deadline() > now


# ---- the slot core ------------------------------------------------------------------------


def _slot(**policy: float) -> Slot:
    return Slot("BGRSCRPT_01", policy=Policy(**policy))  # type: ignore[arg-type]


def _slot_in(state: SlotState, *, watchdog: float = 0.0, **policy: float) -> Slot:
    slot = _slot(**policy)
    slot.set_watchdog(watchdog, T0)
    if state is SlotState.STOPPED:
        return slot
    slot.start(T0)
    slot.spawned(4242, T0)
    if state is SlotState.STARTING:
        return slot
    slot.tick(T0 + slot.policy.startsecs)
    if watchdog:
        slot.notified({"WATCHDOG": "1"}, T0 + slot.policy.startsecs)
    if state is SlotState.RUNNING:
        return slot
    if state is SlotState.BACKOFF:
        slot.exited(1, T0 + 10)
    elif state is SlotState.STOPPING:
        slot.stop(T0 + 10)
    elif state is SlotState.EXITED:
        slot.exited(0, T0 + 10)
    elif state is SlotState.FATAL:
        slot.exited(1, T0 + 10)
        slot.tick(T0 + 100)
        slot.spawn_failed("no script at /x.py", T0 + 100)
    assert slot.state is state
    return slot


SLOT_CASES = {
    f"{state.name}-wd{wd:g}{'-zero-timeouts' if zero else ''}": (state, wd, zero)
    for state in SlotState
    for wd in (0.0, 3.0)
    for zero in (False, True)
}


def test_slot_cases_cover_every_state() -> None:
    assert {state for state, _, _ in SLOT_CASES.values()} == set(SlotState)


@pytest.mark.parametrize("late", LATENESS)
@pytest.mark.parametrize("case", list(SLOT_CASES))
def test_slot_deadline_in_the_past_fires_then_rearms(case: str, late: float) -> None:
    state, watchdog, zero = SLOT_CASES[case]
    timeouts = {"stop_timeout": 0.0, "backoff_initial": 0.0, "backoff_max": 0.0} if zero else {}
    slot = _slot_in(state, watchdog=watchdog, **timeouts)
    deadline = slot.next_deadline()
    now = (deadline if deadline is not None else T0 + 100.0) + late
    settle_slot(slot, now)
    after = slot.next_deadline()
    assert after is None or after > now


def test_slot_stopping_with_a_zero_stop_timeout_kills_then_waits() -> None:
    slot = _slot_in(SlotState.STOPPING, stop_timeout=0.0)
    assert slot.next_deadline() == T0 + 10
    assert settle_slot(slot, T0 + 10 + 5.0) == [Kill(SIGKILL)]
    assert slot.next_deadline() is None  # then only the exit can move it on
    assert slot.exited(-SIGTERM, T0 + 16)  # recorded


@pytest.mark.parametrize("seed", range(30))
def test_slot_random_walk_with_late_ticks_always_moves_on(seed: int) -> None:
    rng = random.Random(seed)
    slot = _slot(
        startsecs=rng.choice([0.0, 1.0]),
        stop_timeout=rng.choice([0.0, 2.0]),
        backoff_initial=rng.choice([0.0, 0.5]),
        backoff_max=2.0,
        start_limit_burst=3,
        start_limit_interval=10.0,
    )
    now = T0
    alive = False

    def apply(actions: list) -> None:
        nonlocal alive
        if Spawn() in actions:
            alive = True
            slot.spawned(rng.randrange(2, 99999), now)

    for _ in range(300):
        event = rng.choice(["start", "stop", "restart", "exit", "beat", "wd", "wait", "late"])
        if event in ("start", "stop", "restart"):
            apply(getattr(slot, event)(now))
        elif event == "exit" and alive:
            alive = False
            apply(slot.exited(rng.choice([0, 1, -9]), now))
        elif event == "beat":
            slot.notified({"WATCHDOG": "1"}, now)
        elif event == "wd":
            slot.set_watchdog(rng.choice([0.0, 0.5, 2.0]), now)
            slot.set_autorestart(rng.choice(list(AutoRestart)))
        elif event == "wait":
            now += rng.choice([0.0, 0.1, 0.7, 2.5])
        elif event == "late":
            deadline = slot.next_deadline()
            if deadline is not None:
                now = max(now, deadline + rng.choice([0.0, 1e-9, 3.0, 500.0]))
        if Spawn() in settle_slot(slot, now):
            alive = True
        after = slot.next_deadline()
        assert after is None or after > now
        if slot.state is SlotState.STOPPING and after is None:
            assert copy.copy(slot).tick(now + 1e6) == []  # waits for the exit, nothing due
