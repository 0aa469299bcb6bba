"""Latest values of the plotted PVs, from Channel Access monitors or polls.

caproto's threading client delivers updates and connection changes on its own
threads; they only store the newest reading here. The plot takes a sample
(``latest()``) on its own loop at its own interval.

Every PV starts with a monitor, which costs nothing while the PV is quiet. A PV
found updating many times faster than the plot samples (``review``) is read
once per sample instead (``poll``), so that a block updating at 1 kHz costs a
read per sample rather than a thousand updates a second. A PV that is
disconnected, has never answered, or is INVALID reads as NaN.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from collections.abc import Sequence
from typing import Any

INVALID = 3
# Updates per sample interval above which a PV is polled instead. A read costs
# caproto about what two monitor updates do, so only much faster PVs gain.
FAST = 10.0


class Monitors:
    """The newest value of each of ``pv_names``; ``latest()`` gives one float per PV.

    PVs in ``text_names`` are monitored as strings (an enum's state names, e.g.
    the DAE's run state), for ``latest_text``; they are never polled.
    """

    def __init__(
        self, pv_names: Sequence[str], text_names: Sequence[str] = (), context: Any = None
    ):
        from caproto import ChannelType

        from bgrscrpt_ioc.ca.threading_client import Context

        self.names = list(pv_names)
        self.text_names = set(text_names)
        self.polled: set[str] = set()
        self._lock = threading.Lock()
        self._values: dict[str, float | str] = {}
        self._updates = dict.fromkeys(self.names, 0)  # monitor updates since the last review
        self._context = context if context is not None else Context()
        self._subscriptions: dict[str, Any] = {}
        pvs = self._context.get_pvs(
            *self.names, connection_state_callback=self._on_connection, timeout=1.0
        )
        self._pvs = dict(zip(self.names, pvs, strict=True))
        for pv in pvs:
            as_text = pv.name in self.text_names
            sub = pv.subscribe(data_type=ChannelType.TIME_STRING if as_text else "time")
            sub.add_callback(self._on_update)
            self._subscriptions[pv.name] = sub  # a subscription lives while referenced

    def _on_connection(self, pv, state: str) -> None:
        if state != "connected":
            with self._lock:
                self._values.pop(pv.name, None)

    def _on_update(self, sub, response) -> None:
        self._store(sub.pv.name, response, update=True)

    def _on_read(self, name: str, response) -> None:
        from caproto import ErrorResponse

        if isinstance(response, ErrorResponse):  # the server refused the read: a gap
            with self._lock:
                self._values.pop(name, None)
            return
        self._store(name, response, update=False)

    def _store(self, name: str, response, update: bool) -> None:
        value = _reading(response)
        with self._lock:
            if update:
                self._updates[name] = self._updates.get(name, 0) + 1
            if value is None:
                self._values.pop(name, None)
            else:
                self._values[name] = value

    def review(self, elapsed: float, interval: float) -> list[str]:
        """Switch PVs that updated more than ``FAST`` times per ``interval`` over the
        last ``elapsed`` seconds from their monitor to a read per sample. Returns them."""
        with self._lock:
            updates, self._updates = self._updates, dict.fromkeys(self.names, 0)
        fast = [
            name
            for name, count in updates.items()
            if name not in self.polled
            and name not in self.text_names
            and elapsed > 0
            and count * interval / elapsed > FAST
        ]
        for name in fast:
            sub = self._subscriptions.pop(name, None)
            if sub is not None:
                with contextlib.suppress(Exception):  # the server may be going away
                    sub.clear()
            self.polled.add(name)
        return fast

    def poll(self) -> None:
        """Ask every polled PV for its value (the answer lands for the next sample)."""
        for name in self.polled:
            pv = self._pvs[name]
            if not pv.connected:
                continue  # it is a gap until it reconnects
            with contextlib.suppress(Exception):  # a circuit dying under us: a gap
                pv.read(wait=False, callback=functools.partial(self._on_read, name))

    def latest(self) -> list[float]:
        """Newest value of every PV in order, NaN where there is none to plot."""
        with self._lock:
            return [_as_float(self._values.get(name)) for name in self.names]

    def latest_text(self, name: str) -> str | None:
        """Newest value of ``name`` as text (an enum's state name), None when unknown."""
        with self._lock:
            value = self._values.get(name)
        return None if value is None else str(value)

    def close(self) -> None:
        for sub in self._subscriptions.values():
            # Closing must not fail because the server went away.
            with contextlib.suppress(Exception):
                sub.clear()
        self._subscriptions.clear()
        self.polled.clear()


def _reading(response) -> float | str | None:
    """The value to keep from a monitor update: None when INVALID or empty."""
    if int(getattr(response.metadata, "severity", 0)) >= INVALID:
        return None
    data = response.data
    if len(data) == 0:
        return None
    if len(data) > 1 and isinstance(data[0], bytes):
        # A char waveform read as strings: one character per element.
        return b"".join(data).split(b"\0", 1)[0].decode("utf-8", "replace")
    value = data[0]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, str):
        return value
    return float(value)


def _as_float(value: float | str | None) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)
    except ValueError:
        return math.nan
