"""Watch the IOC's heartbeat through libca while a fault is going on.

``BGRSCRPT:HEARTBEAT`` goes up by one a second from the IOC's event loop. A
monitor on it (pyepics, callbacks on libca's own thread) sees every beat as it
arrives; a gap much longer than a second means the loop was held.
"""

from __future__ import annotations

import threading
import time

import epics

MAX_GAP = 1.5
"""The longest wait between two beats that still counts as keeping the beat."""


class Heartbeat:
    """A libca monitor on ``$(P)BGRSCRPT:HEARTBEAT``; a context manager."""

    def __init__(self, prefix: str):
        self.name = f"{prefix}BGRSCRPT:HEARTBEAT"
        self._lock = threading.Lock()
        self.arrivals: list[float] = []
        self._pv: epics.PV | None = None

    def __enter__(self) -> Heartbeat:
        self._pv = epics.PV(self.name, callback=self._on_value, auto_monitor=True)
        if not self._pv.wait_for_connection(timeout=5.0):
            raise AssertionError(f"{self.name} did not connect")
        deadline = time.monotonic() + 5.0
        while not self.arrivals and time.monotonic() < deadline:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pv is not None:
            self._pv.clear_callbacks()
            self._pv.disconnect()
            self._pv = None

    def _on_value(self, **_: object) -> None:
        with self._lock:
            self.arrivals.append(time.monotonic())

    def worst_gap(self) -> float:
        """The longest time without a beat, up to now."""
        with self._lock:
            times = [*self.arrivals, time.monotonic()]
        if len(times) < 2:
            return float("inf")
        return max(b - a for a, b in zip(times, times[1:], strict=False))

    def beats(self) -> int:
        with self._lock:
            return len(self.arrivals)

    def check(self, max_gap: float = MAX_GAP) -> None:
        """Fail unless every beat came within ``max_gap`` of the one before."""
        worst = self.worst_gap()
        assert worst <= max_gap, f"the heartbeat stopped for {worst:.2f} s (beats: {self.beats()})"
