"""The IOC's own health: its heartbeat, how late its event loop runs, and what is wrong
with it, in words.

:class:`IocStatus` is what ``BGRSCRPT:`` shows (a source of the publisher): it
beats once a second, on absolute monotonic seconds, and beats the slots with it.

:class:`LoopLag` wakes ten times a second and notes how late each wake-up came:
a loop held by anything (a slow call, a blocked disk, a starved machine) shows
as lag. ``BGRSCRPT:LOOP_LAG`` shows the worst of each second.

:func:`health_message` turns the state database's status into ``BGRSCRPT:MSG``
and its severity: MAJOR while changes cannot be saved, NO_ALARM otherwise.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from caproto import AlarmSeverity

from .ca.ioc_pvs import IocView
from .state_disk import DiskStatus

SAMPLE_INTERVAL = 0.1


class LoopLag:
    """Samples the event loop's lateness; :meth:`take` returns the worst since the last take."""

    def __init__(self, interval: float = SAMPLE_INTERVAL):
        self.interval = interval
        self._worst = 0.0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + self.interval
            await asyncio.sleep(self.interval)
            self.note(loop.time() - due)

    def note(self, late: float) -> None:
        """A timer that ran ``late`` seconds after it was due."""
        self._worst = max(self._worst, late)

    def take(self) -> float:
        """The worst lateness (ms) since the last call."""
        worst, self._worst = self._worst, 0.0
        return max(worst, 0.0) * 1000.0


class IocStatus:
    """The IOC-wide PVs' state: HEARTBEAT, UPTIME, LOOP_LAG and MSG.

    ``on_change`` is the publisher's notice; ``on_beat(now)`` runs at each beat
    (the slots' HEARTBEATs count in step with the IOC's).
    """

    def __init__(
        self,
        started: float,
        on_change: Callable[[], None],
        on_beat: Callable[[float], None] = lambda now: None,
    ):
        self.started = started
        self.heartbeat = 0
        self.lag = LoopLag()
        self._lag_ms = 0.0
        self._msg: tuple[str, AlarmSeverity] = ("", AlarmSeverity.NO_ALARM)
        self._on_change = on_change
        self._on_beat = on_beat

    def set_msg(self, text: str, severity: AlarmSeverity) -> None:
        """The IOC-wide MSG and its severity (shown at the next publication)."""
        self._msg = (text, severity)
        self._on_change()

    def view(self, now: float) -> IocView:
        return IocView(self.heartbeat, int(now - self.started), self._lag_ms, *self._msg)

    async def tick(self) -> None:
        """1 Hz: the IOC's HEARTBEAT, each healthy slot's HEARTBEAT, UPTIMEs.

        Scheduled against absolute monotonic seconds so beats do not drift.
        """
        next_beat = self.started + 1.0
        while True:
            await asyncio.sleep(max(next_beat - time.monotonic(), 0.0))
            now = time.monotonic()
            self.lag.note(now - next_beat)
            self._lag_ms = self.lag.take()
            self.heartbeat += 1
            self._on_beat(now)
            next_beat += 1.0
            if next_beat < now:  # the loop was blocked: resynchronise, do not burst
                next_beat = now + 1.0
            self._on_change()


def health_message(status: DiskStatus, start_warning: str = "") -> tuple[str, AlarmSeverity]:
    """``BGRSCRPT:MSG`` and its severity for the state database's ``status``."""
    if not status.saving:
        text = (
            f"state database: cannot save since {_clock(status.since)}: {status.problem}; "
            f"{status.pending} change(s) kept in memory, retrying"
        )
        return text, AlarmSeverity.MAJOR_ALARM
    if status.note:
        return f"state database: {status.note}", AlarmSeverity.NO_ALARM
    if start_warning:
        return start_warning, AlarmSeverity.NO_ALARM
    return "", AlarmSeverity.NO_ALARM


def _clock(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch))
