"""What the slot core's unit tests share: a slot brought into any state through real
events, on a fake monotonic clock.

No processes and no event loop: ``now`` is a plain float and the process adapter
is played by the tests themselves, answering each ``Spawn`` with
``spawned``/``spawn_failed`` and each ``Kill`` with ``exited`` when they choose to.
"""

from __future__ import annotations

from signal import SIGTERM
from typing import Any

from bgrscrpt_ioc.core.slot import (
    Action,
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
AR = AutoRestart
PID = 4242
T0 = 100.0  # when every scripted run starts; far from 0.0 so stale zeros show up


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
