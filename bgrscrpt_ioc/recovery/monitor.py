"""Channel Access monitors for the watches: caproto's asyncio client on the IOC's loop.

Every watched PV gets one time-type subscription (so each update carries its
severity and timestamp) and connection tracking. Updates go to a listener as
plain calls on the loop. caproto's client holds callbacks by weak reference and
runs plain functions in a thread pool, so the callbacks here are coroutine
methods of an object the watch service keeps alive.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from caproto import ChannelType
from caproto.asyncio.client import Context

log = logging.getLogger("bgrscrpt_ioc.watch")


@dataclass(frozen=True)
class PvUpdate:
    """One PV's news: disconnected, or connected with a value and its severity."""

    name: str
    connected: bool
    severity: int = 0
    value: Any = None
    timestamp: float = 0.0  # the server's timestamp of the value (epoch seconds)


Listener = Callable[[PvUpdate], None]


class PvMonitor:
    """Subscriptions to a set of PVs on one caproto Context.

    ``as_string``: subscribe as DBR_TIME_STRING (for watches whose `values` are
    strings, e.g. enum state names), else as the PV's native time type.
    A PV that reconnects reports "connected" with its first new value, so a
    stale severity from before the disconnect is never taken as fresh.
    """

    def __init__(self, context: Context, listener: Listener):
        self.context = context
        self.listener = listener
        self._pvs: dict[str, Any] = {}
        self._subs: list[tuple[Any, int]] = []

    async def add(self, names: Iterable[str], *, as_string: bool = False) -> None:
        names = [n for n in dict.fromkeys(names) if n not in self._pvs]
        if not names:
            return
        pvs = await self.context.get_pvs(
            *names, connection_state_callback=self._on_connection, timeout=None
        )
        data_type = ChannelType.TIME_STRING if as_string else "time"
        for pv in pvs:
            self._pvs[pv.name] = pv
            sub = pv.subscribe(data_type=data_type)
            self._subs.append((sub, sub.add_callback(self._on_value)))

    async def _on_connection(self, pv: Any, state: str) -> None:
        if state != "connected":
            self.listener(PvUpdate(pv.name, connected=False))

    async def _on_value(self, sub: Any, response: Any) -> None:
        metadata = response.metadata
        data = response.data
        value = data[0] if len(data) else None
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        self.listener(
            PvUpdate(
                sub.pv.name,
                connected=True,
                severity=int(getattr(metadata, "severity", 0)),
                value=value,
                timestamp=float(getattr(metadata, "timestamp", 0.0)),
            )
        )

    def kick_searches(self) -> None:
        """Search again now for every PV not connected.

        caproto backs its search retries off to every 5 s; a watch verifying a
        restart wants the new IOC found as soon as it serves.
        """
        event = getattr(self.context.broadcaster, "_search_now", None)
        if event is not None:
            event.set()

    async def close(self) -> None:
        for sub, token in self._subs:
            try:
                await sub.remove_callback(token)
            except Exception as exc:  # a dead circuit: nothing left to unsubscribe
                log.debug("unsubscribing %s: %s", sub.pv.name, exc)
        self._subs.clear()
