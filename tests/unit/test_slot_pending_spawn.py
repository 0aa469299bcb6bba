"""The slot core while a Spawn is under way (the runner checks the script off the loop):
STOP and RESTART may arrive before the answer, and the answer settles them."""

from __future__ import annotations

import random
from signal import SIGKILL, SIGTERM

import pytest

from bgrscrpt_ioc.core.slot import (
    AutoRestart,
    Cause,
    Kill,
    Policy,
    RunEnded,
    Slot,
    SlotState,
    Spawn,
)

S = SlotState
T0 = 100.0


def pending() -> Slot:
    slot = Slot("BGRSCRPT_01", Policy(stop_timeout=5.0))
    assert slot.start(T0) == [Spawn()]
    assert slot.state is S.STARTING and slot.next_deadline() is None
    return slot


def test_stop_then_the_spawn_fails_or_is_given_up_leaves_it_stopped():
    slot = pending()
    assert slot.stop(T0 + 0.1) == []  # nothing to signal yet
    assert slot.state is S.STOPPING and slot.message == "stopping"
    assert slot.spawn_failed("", T0 + 0.2) == []
    assert slot.state is S.STOPPED and slot.message == "stopped before it started"
    assert slot.start_count == 0
    slot = pending()
    slot.stop(T0 + 0.1)
    slot.spawn_failed("syntax error in x.py line 3: invalid syntax", T0 + 0.2)
    assert slot.message == "stopped before it started: syntax error in x.py line 3: invalid syntax"


def test_stop_then_the_spawn_succeeds_stops_the_new_run_at_once():
    slot = pending()
    slot.stop(T0 + 0.1)
    assert slot.spawned(4242, T0 + 0.2) == [Kill(SIGTERM)]
    assert slot.state is S.STOPPING and slot.next_deadline() == T0 + 5.2
    assert slot.tick(T0 + 5.2) == [Kill(SIGKILL)]
    assert slot.exited(-9, T0 + 5.3) == [RunEnded(Cause.STOP, -9)]
    assert slot.state is S.STOPPED


def test_restart_during_the_spawn_spawns_again():
    slot = pending()
    assert slot.restart(T0 + 0.1) == []
    assert slot.message == "restarting"
    assert slot.spawn_failed("", T0 + 0.2) == [Spawn()]  # given up: check and start afresh
    assert slot.state is S.STARTING and slot.start_count == 1
    assert slot.spawned(7, T0 + 0.3) == []
    assert slot.tick(T0 + 1.3) == [] and slot.state is S.RUNNING


def test_start_after_stop_during_the_spawn_starts_once_stopped():
    slot = pending()
    slot.stop(T0 + 0.1)
    slot.start(T0 + 0.15)
    assert slot.message == "will start once stopped"
    assert slot.spawned(5, T0 + 0.2) == [Kill(SIGTERM)]
    actions = slot.exited(-15, T0 + 0.3)
    assert actions == [RunEnded(Cause.STOP, -15), Spawn()]


@pytest.mark.parametrize("seed", range(40))
def test_random_walk_with_late_spawn_answers(seed):
    """Spawn answers arrive any time later, commands in between: the invariants hold."""
    rng = random.Random(seed)
    slot = Slot("BGRSCRPT_01", Policy(startsecs=0.5, stop_timeout=1.0, backoff_initial=0.2))
    now, spawn_pending, alive, runs_open = T0, False, False, 0

    def apply(actions):
        nonlocal spawn_pending, alive, runs_open
        for action in actions:
            if isinstance(action, Spawn):
                assert not spawn_pending and not alive, "a second Spawn"
                spawn_pending = True
            elif isinstance(action, Kill):
                assert alive, "Kill with no process"
            elif isinstance(action, RunEnded):
                runs_open -= 1
                assert runs_open == 0

    for _ in range(400):
        event = rng.choice(["start", "stop", "restart", "answer", "answer", "exit", "wait", "mode"])
        if event in ("start", "stop", "restart"):
            apply(getattr(slot, event)(now))
        elif event == "answer" and spawn_pending:
            spawn_pending = False
            if rng.random() < 0.3:
                apply(slot.spawn_failed(rng.choice(["", "no script at x"]), now))
            else:
                alive, runs_open = True, runs_open + 1
                apply(slot.spawned(rng.randrange(2, 9999), now))
        elif event == "exit" and alive:
            alive = False
            apply(slot.exited(rng.choice([0, 1, -15]), now))
        elif event == "mode":
            slot.set_autorestart(rng.choice(list(AutoRestart)))
        else:
            now += rng.choice([0.0, 0.1, 0.6, 2.0])
        deadline = slot.next_deadline()
        while deadline is not None and deadline <= now:
            apply(slot.tick(now))
            deadline = slot.next_deadline()
        # A pending spawn is STARTING or STOPPING, with no pid and no deadline of its own.
        if spawn_pending:
            assert slot.state in (S.STARTING, S.STOPPING) and slot.pid == 0
        assert (slot.pid != 0) is alive
        assert slot.state not in (S.STOPPED, S.EXITED, S.FATAL, S.BACKOFF) or not (
            alive or spawn_pending
        )
