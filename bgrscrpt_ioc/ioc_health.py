"""The IOC's own health: how late its event loop runs, and what is wrong with it, in words.

:class:`LoopLag` wakes ten times a second and notes how late each wake-up came:
a loop held by anything (a slow call, a blocked disk, a starved machine) shows
as lag. ``BGRSCRPT:LOOP_LAG`` shows the worst of each second.

:func:`health_message` turns the state database's status into ``BGRSCRPT:MSG``
and its severity: MAJOR while changes cannot be saved, NO_ALARM otherwise.
"""

from __future__ import annotations

import asyncio
import time

from caproto import AlarmSeverity

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
