"""Rate limits. :class:`OncePerInterval`: at most one report per key per interval, what
keeps a bad client from flooding the log. :class:`HoldBack`: a value that may change
on every look (a slot's LOG), shown at most once per interval.

Pure: the caller passes the time (``time.monotonic()``) and decides what to show.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Slot:
    last: float
    suppressed: int = 0


class OncePerInterval:
    """Let one event per key through per ``interval`` seconds; count the rest.

    ``allow(key, now)`` answers ``(True, n)`` when the event is to be reported,
    ``n`` being how many of the same key were held back since the last report,
    and ``(False, 0)`` when it is to be held back. At most ``max_keys`` keys are
    remembered: when that many are live, the oldest are forgotten first (a
    forgotten key is reported again at once, so memory, not the log, is what
    this bounds).
    """

    def __init__(self, interval: float = 60.0, max_keys: int = 4096) -> None:
        if interval <= 0 or max_keys < 1:
            raise ValueError("interval must be > 0 and max_keys >= 1")
        self.interval = interval
        self.max_keys = max_keys
        self._slots: dict[Hashable, _Slot] = {}

    def allow(self, key: Hashable, now: float) -> tuple[bool, int]:
        slot = self._slots.get(key)
        if slot is not None and now - slot.last < self.interval:
            slot.suppressed += 1
            return False, 0
        held = slot.suppressed if slot is not None else 0
        if slot is not None:
            del self._slots[key]  # re-inserted at the end: the dict stays oldest-first
        elif len(self._slots) >= self.max_keys:
            self._forget(now)
        self._slots[key] = _Slot(last=now)
        return True, held

    def _forget(self, now: float) -> None:
        """Drop expired keys; if none has expired, the oldest one."""
        expired = [k for k, s in self._slots.items() if now - s.last >= self.interval]
        for key in expired:
            del self._slots[key]
        if len(self._slots) >= self.max_keys:
            del self._slots[next(iter(self._slots))]

    def __len__(self) -> int:
        return len(self._slots)


_NO_EVENT = object()


class HoldBack(Generic[T]):
    """A value shown at most once per ``interval`` seconds, except along with an event.

    ``show(value, event, now)`` answers the value to show now and whether a newer
    one is held back (the caller looks again later). The event (for a slot: its
    state, PID and MSG) lets a new value through at once when it differs from the
    last look's: a traceback's last line must come with the MSG that quotes it.
    ``shown`` is what is shown to begin with.
    """

    def __init__(self, interval: float, shown: T) -> None:
        self.interval = interval
        self._shown = shown
        self._when = -math.inf
        self._event: Hashable = _NO_EVENT

    def show(self, value: T, event: Hashable, now: float) -> tuple[T, bool]:
        previous, self._event = self._event, event
        if value == self._shown:
            return value, False
        if now - self._when < self.interval and previous == event:
            return self._shown, True
        self._shown, self._when = value, now
        return value, False
