"""When a Channel Access client searches again for the PVs of a circuit that ended.

A circuit that served (the server connected a channel on it) or lived a while,
and then ended (the server restarted, the network dropped it), is searched for
again at once, however often that happens: an IOC restarted again and again is
found again each time as fast as the first. One that never served and ends
young, or never connects (refused, no handshake), ends again soon if tried
again at once: a server that answers searches but refuses or drops every
circuit would otherwise have the client search and connect in a tight loop.
Such a server's circuits are retried after a delay that doubles, up to a cap,
until one serves. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable

FIRST_DELAY = 0.25
"""Seconds before the first retry after a circuit that ended young."""

MAX_DELAY = 5.0
"""The longest wait between retries (caproto's own longest search interval)."""

HEALTHY_AFTER = 10.0
"""A circuit that lived this long ended through no fault of its own: retry at once."""


class CircuitRetry:
    """Per server address: how long to wait before searching again after a circuit ended."""

    def __init__(
        self,
        *,
        first: float = FIRST_DELAY,
        cap: float = MAX_DELAY,
        healthy_after: float = HEALTHY_AFTER,
    ) -> None:
        self.first = first
        self.cap = cap
        self.healthy_after = healthy_after
        self._failures: dict[Hashable, int] = {}

    def ended(self, address: Hashable, lived: float | None, *, served: bool = False) -> float:
        """A circuit to ``address`` ended after ``lived`` seconds connected (None: it
        never connected); ``served``: the server connected a channel on it. Returns the
        seconds to wait before searching again."""
        if served or (lived is not None and lived >= self.healthy_after):
            self._failures.pop(address, None)
            return 0.0
        self._failures[address] = self._failures.get(address, 0) + 1
        return self.delay(address)

    def delay(self, address: Hashable) -> float:
        """The wait that the last :meth:`ended` for ``address`` asked for (0: none)."""
        failures = self._failures.get(address, 0)
        return float(min(self.first * 2.0 ** (failures - 1), self.cap)) if failures else 0.0

    def failures(self, address: Hashable) -> int:
        """Circuits to ``address`` that ended young in a row."""
        return self._failures.get(address, 0)
