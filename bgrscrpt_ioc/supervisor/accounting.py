"""Each slot's CPU, memory and process count, measured every ``INTERVAL`` seconds.

With a cgroup per slot: CPU from ``cpu.stat`` (every process that ran in it,
those already gone included), the processes from ``cgroup.procs``, memory from
``memory.stat`` when the memory controller is on for it, else the sum of the
processes' memory. Without cgroups: the slot's processes are found below the
keeper (``proctree.slot_members``), CPU is the growth of their user + system
time (and of their reaped children's), memory theirs. A process's memory is
its RSS; several processes' is the sum of their PSS, so that pages a forked
worker shares with its parent count once (``proctree.tree_memory_bytes``).

A sample reads a few small /proc and cgroup files per process: tens of µs for
a slot, in a thread beside the event loop, every 2 s (more for a tree of several
large processes, whose PSS the kernel sums page by page: about 1 ms per 100 MB).
``BGRSCRPT_ACCOUNTING=off`` turns it off (the bench measures what it costs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from . import cgroups, proctree

log = logging.getLogger(__name__)

INTERVAL = 2.0
SWITCH_VAR = "BGRSCRPT_ACCOUNTING"
MB = 2**20
"""A megabyte as systemd's MemoryMax=…M counts it (MiB)."""


def enabled() -> bool:
    """Accounting runs unless ``BGRSCRPT_ACCOUNTING`` says off/0/no."""
    return os.environ.get(SWITCH_VAR, "on").strip().lower() not in ("off", "0", "no", "false")


@dataclass(frozen=True)
class Usage:
    """One slot's processes at one moment."""

    cpu_percent: float = 0.0  # of one core, over the last interval
    rss_bytes: int = 0
    nproc: int = 0

    @property
    def rss_mb(self) -> float:
        return self.rss_bytes / MB


class SlotMeter:
    """Measures one slot. ``leader()`` gives its running script's pid (None if none);
    ``keeper()`` the keeper's pid and every slot's leader (for the subreaper mode)."""

    def __init__(
        self,
        slot: str,
        instance: str,
        cgroup: Path | None,
        leader: Callable[[], int | None],
        keeper: Callable[[], tuple[int | None, Sequence[int]]],
    ) -> None:
        self.slot = slot
        self.instance = instance
        self.cgroup = None if cgroup is None else str(cgroup)
        self._leader = leader
        self._keeper = keeper
        self._last_time: float | None = None
        self._last_cpu_usec: int | None = None
        self._last_ticks: dict[int, tuple[int, int]] = {}  # pid -> (ticks, start time)
        self._last_boot: float | None = None  # ticks since boot at the last sample

    def sample(self, now: float) -> Usage:
        """The slot's processes now; CPU over the time since the previous sample."""
        return self.sample_of(now, self._leader(), self._keeper())

    def who(self) -> tuple[int | None, tuple[int | None, Sequence[int]]]:
        """The leader and the keeper as :meth:`sample_of` takes them (read on the loop)."""
        return self._leader(), self._keeper()

    def sample_of(
        self, now: float, leader: int | None, keeper: tuple[int | None, Sequence[int]]
    ) -> Usage:
        """:meth:`sample` with the leader and keeper given: reads only /proc and the
        cgroup files, so it may run in a thread while the loop goes on."""
        elapsed = None if self._last_time is None else now - self._last_time
        self._last_time = now
        if self.cgroup is not None:
            pids = cgroups.tree_procs(self.cgroup)
            used = cgroups.cpu_usec(self.cgroup)
            cpu = 0.0
            if used is not None and self._last_cpu_usec is not None and elapsed:
                cpu = max(used - self._last_cpu_usec, 0) / 1e6 / elapsed * 100
            self._last_cpu_usec = used
            memory = cgroups.memory_bytes(self.cgroup)
            rss = memory if memory is not None else proctree.tree_memory_bytes(pids)
            return Usage(cpu, rss, len(pids))
        pids = self._members(leader, keeper)
        ticks: dict[int, tuple[int, int]] = {}
        for pid in pids:
            found = proctree.cpu_ticks(pid)
            if found is not None:
                ticks[pid] = found
        booted = time.clock_gettime(time.CLOCK_BOOTTIME) * proctree.CLOCK_TICKS
        spent = 0
        for pid, (total, started) in ticks.items():
            before = self._last_ticks.get(pid)
            if before is not None and before[1] == started:
                spent += total - before[0]
            elif self._last_boot is not None and started >= self._last_boot:
                spent += total  # started since the last sample: all its time is new
            # else: first seen now but older (the first sample, an adopted orphan): from now
        self._last_ticks = ticks
        self._last_boot = booted
        cpu = spent / proctree.CLOCK_TICKS / elapsed * 100 if elapsed else 0.0
        return Usage(cpu, proctree.tree_memory_bytes(list(ticks)), len(ticks))

    def _members(
        self, leader: int | None, keeper_and_leaders: tuple[int | None, Sequence[int]]
    ) -> list[int]:
        keeper, leaders = keeper_and_leaders
        if keeper is None:
            return []
        return proctree.slot_members(leader, keeper, self.instance, self.slot, leaders)


class Accounted(Protocol):
    """What the accountant reports to (the slot runner)."""

    def account(self, usage: Usage, now: float) -> None: ...


class Accountant:
    """Samples every slot every ``interval`` seconds (in a thread) and reports to its
    runner (on the loop)."""

    def __init__(self, slots: list[tuple[SlotMeter, Accounted]], interval: float = INTERVAL):
        self.slots = slots
        self.interval = interval

    async def run(self) -> None:
        next_at = time.monotonic() + self.interval
        while True:
            await asyncio.sleep(max(next_at - time.monotonic(), 0.0))
            now = time.monotonic()
            # Who runs is the runners' and the keeper's state: read here, on the loop.
            # The reading of /proc happens in a thread: a tree of large forked workers
            # costs about 1 ms per 100 MB (PSS), which must not hold the heartbeat.
            who = [meter.who() for meter, _ in self.slots]
            usages = await asyncio.to_thread(self._sample_all, now, who)
            for (meter, runner), usage in zip(self.slots, usages, strict=True):
                if usage is None:
                    continue
                try:
                    runner.account(usage, now)
                except Exception:  # a measurement must never stop the IOC
                    log.exception("accounting %s failed", meter.slot)
            next_at += self.interval
            if next_at < now:  # the loop was blocked: no burst of samples
                next_at = now + self.interval

    def _sample_all(
        self, now: float, who: list[tuple[int | None, tuple[int | None, Sequence[int]]]]
    ) -> list[Usage | None]:
        usages: list[Usage | None] = []
        for (meter, _), (leader, keeper) in zip(self.slots, who, strict=True):
            try:
                usages.append(meter.sample_of(now, leader, keeper))
            except Exception:  # a measurement must never stop the IOC
                log.exception("measuring %s failed", meter.slot)
                usages.append(None)
        return usages
