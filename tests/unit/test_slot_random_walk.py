"""The slot core: invariants over long random event sequences, against a faithful
fake process adapter.

A fake monotonic clock and the tests as the process adapter: see slot_helpers.
"""

from __future__ import annotations

import random
from signal import SIGKILL, SIGTERM

import pytest

from bgrscrpt_ioc.core.slot import (
    Action,
    AutoRestart,
    Cause,
    Kill,
    RunEnded,
    Slot,
    Spawn,
)
from tests.unit.slot_helpers import (
    T0,
    S,
    new_slot,
)

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
