"""Channel Access monitors for the watches: caproto's asyncio client on the IOC's loop.

Every watched PV gets one time-type subscription (so each update carries its
severity and timestamp) and connection tracking. Updates go to a listener as
plain calls on the loop. caproto's client holds callbacks by weak reference and
runs plain functions in a thread pool, so the callbacks here are coroutine
methods of an object the watch service keeps alive.

The context is :class:`bgrscrpt_ioc.ca.client.Context`, whose circuits are
searched for again after any loss (an unresponsive server, a refused or reset
circuit). On top of that, a PV that has been silent (not connected, or no value
since it connected) for longer than the CA connection timeout
(``EPICS_CA_CONN_TMO``) is re-created: whatever stranded it is left behind with
the old PV object, and a new one is searched for at caproto's fastest rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from caproto import ChannelType

from ..ca.client import NO_ANSWER, Context, why_not_connected

log = logging.getLogger("bgrscrpt_ioc.watch")

SILENCE_CHECK = 1.0  # seconds between looks for silent PVs and their reasons (at most)


@dataclass(frozen=True)
class PvUpdate:
    """One PV's news: disconnected, or connected with a value and its severity."""

    name: str
    connected: bool
    severity: int = 0
    value: Any = None
    timestamp: float = 0.0  # the server's timestamp of the value (epoch seconds)
    reason: str = ""  # disconnected: why, in words ("" when not known)


Listener = Callable[[PvUpdate], None]


class PvMonitor:
    """Subscriptions to a set of PVs on one caproto Context.

    ``as_string``: subscribe as DBR_TIME_STRING (for watches whose `values` are
    strings, e.g. enum state names), else as the PV's native time type.
    A PV that reconnects reports "connected" with its first new value, so a
    stale severity from before the disconnect is never taken as fresh; a
    disconnection is reported once.

    ``silent_after``: seconds without a connection (and a value) after which a
    PV is re-created; the CA connection timeout when None.

    ``on_reason(name, reason)``: called when why a PV is not connected changes
    while it stays so (a disconnection itself carries its reason in the update),
    also for a PV never connected: "no server answers its search",
    "cannot connect to 10.1.2.3:5064: connection refused".
    """

    def __init__(
        self,
        context: Context,
        listener: Listener,
        *,
        silent_after: float | None = None,
        on_reason: Callable[[str, str], None] | None = None,
    ):
        self.context = context
        self.listener = listener
        self.on_reason = on_reason
        if silent_after is None:
            silent_after = float(context.broadcaster.environ["EPICS_CA_CONN_TMO"])
        self.silent_after = silent_after
        self.recreated = 0  # PV objects re-created so far (for the log and the tests)
        self._pvs: dict[str, Any] = {}
        self._subs: dict[str, tuple[Any, int]] = {}
        self._data_type: dict[str, Any] = {}
        self._connected: dict[str, bool] = {}
        self._silent_since: dict[str, float] = {}  # not connected since (monotonic)
        self._said_silent: set[str] = set()
        self._reason: dict[str, str] = {}  # not connected: the reason last reported
        self._lost: dict[str, str] = {}  # why its connection went, until it connects again
        self._task: asyncio.Task[None] | None = None

    async def add(self, names: Iterable[str], *, as_string: bool = False) -> None:
        names = [n for n in dict.fromkeys(names) if n not in self._pvs]
        if not names:
            return
        pvs = await self.context.get_pvs(
            *names, connection_state_callback=self._on_connection, timeout=None
        )
        data_type = ChannelType.TIME_STRING if as_string else "time"
        now = time.monotonic()
        for pv in pvs:
            self._pvs[pv.name] = pv
            self._data_type[pv.name] = data_type
            self._connected[pv.name] = False
            self._silent_since[pv.name] = now
            self._subscribe(pv)
        if self._task is None:
            self._task = asyncio.create_task(self._recreate_silent(), name="watch PV silence")

    def _subscribe(self, pv: Any) -> None:
        sub = pv.subscribe(data_type=self._data_type[pv.name])
        self._subs[pv.name] = (sub, sub.add_callback(self._on_value))

    def _current(self, pv: Any) -> bool:
        return self._pvs.get(pv.name) is pv  # not an object re-created since

    async def _on_connection(self, pv: Any, state: str) -> None:
        if state == "connected" or not self._current(pv):
            return
        if self._connected.get(pv.name):
            self._connected[pv.name] = False
            self._silent_since[pv.name] = time.monotonic()
            reason = why_not_connected(pv)
            self._lost[pv.name] = self._reason[pv.name] = reason
            self.listener(PvUpdate(pv.name, connected=False, reason=reason))

    async def _on_value(self, sub: Any, response: Any) -> None:
        name = sub.pv.name
        if not self._current(sub.pv):
            return
        metadata = response.metadata
        data = response.data
        value = data[0] if len(data) else None
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not self._connected.get(name):
            self._connected[name] = True
            self._silent_since.pop(name, None)
            self._reason.pop(name, None)
            self._lost.pop(name, None)
            if name in self._said_silent:
                self._said_silent.discard(name)
                log.info("watched PV %s connected again", name)
        self.listener(
            PvUpdate(
                name,
                connected=True,
                severity=int(getattr(metadata, "severity", 0)),
                value=value,
                timestamp=float(getattr(metadata, "timestamp", 0.0)),
            )
        )

    # ---- silence -----------------------------------------------------------------

    async def _recreate_silent(self) -> None:
        period = max(0.05, min(SILENCE_CHECK, self.silent_after / 4))
        while True:
            await asyncio.sleep(period)
            self._report_reasons()
            now = time.monotonic()
            silent = [n for n, t in self._silent_since.items() if now - t >= self.silent_after]
            for name in silent:
                try:
                    await self._recreate(name)
                except Exception:  # the next look tries again; the watch goes on
                    log.exception("re-creating watched PV %s failed", name)
                self._silent_since[name] = time.monotonic()

    def _report_reasons(self) -> None:
        """Say when why a PV is not connected has changed (a search answered but
        the circuit refused, say), so that MSG says what holds now."""
        if self.on_reason is None:
            return
        for name, pv in list(self._pvs.items()):
            if self._connected.get(name):
                continue
            reason = why_not_connected(pv)
            lost = self._lost.get(name)
            if lost and reason == NO_ANSWER:
                reason = f"{lost}; {NO_ANSWER} since"
            if reason and reason != self._reason.get(name):
                self._reason[name] = reason
                self.on_reason(name, reason)

    async def _recreate(self, name: str) -> None:
        old = self._pvs[name]
        sub, token = self._subs.pop(name, (None, 0))
        if sub is not None:
            try:
                await sub.remove_callback(token)
            except Exception as exc:  # a dead circuit: nothing left to unsubscribe
                log.debug("unsubscribing %s: %s", name, exc)
        new = await self.context.recreate(old)
        self._pvs[name] = new
        self._subscribe(new)
        self.recreated += 1
        if name not in self._said_silent:
            self._said_silent.add(name)
            log.info(
                "watched PV %s: no connection for %g s; searching for it afresh "
                "(every %g s until it answers)",
                name,
                self.silent_after,
                self.silent_after,
            )

    # ---- for the runner ------------------------------------------------------------

    def kick_searches(self) -> None:
        """Search again now for every PV not connected.

        caproto backs its search retries off to every 5 s; a watch verifying a
        restart wants the new IOC found as soon as it serves.
        """
        self.context.broadcaster.search_now()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for name, (sub, token) in list(self._subs.items()):
            try:
                await sub.remove_callback(token)
            except Exception as exc:  # a dead circuit: nothing left to unsubscribe
                log.debug("unsubscribing %s: %s", name, exc)
        self._subs.clear()
