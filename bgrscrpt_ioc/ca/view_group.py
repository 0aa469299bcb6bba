"""The base of the PV groups that show a view: a slot's, a watch's.

A *view* is a dataclass whose field names are the group's PV names in lower case
(``SlotView.status`` is ``…:STATUS``). :meth:`ViewGroup.publish` shows a new view
by writing only the fields that differ from what is shown, in a stated order, a
state PV's alarm with its value in one write. Every publication of these PVs,
from whichever runner, goes through here (called by :mod:`.publisher`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar

from caproto import AlarmSeverity, AlarmStatus, SubscriptionType

from . import properties as props
from .channels import describe_record, preset_alarm, preset_value
from .epics_reads import BasePVGroup


@dataclass(frozen=True)
class RateLimit:
    """Show the view field ``field`` at most every ``interval`` s, except when one of
    the fields ``unless`` changes with it. ``initial``: what the PV shows at first.
    Declared by a group (``ViewGroup.rate_limits``), enforced by the publisher."""

    field: str
    interval: float
    unless: tuple[str, ...]
    initial: Any = ""


class ViewGroup(BasePVGroup):
    """PVs showing one view. A subclass names its view's fields' PVs and sets:

    - ``state_severities``: field → (state index → severity), for the fields whose
      alarm follows their state (STATUS, STATE);
    - ``last``: fields written after every other, in this order (the PV clients
      react to goes last, so that the rest already tells the same story);
    - ``rate_limits``: fields the publisher shows less often than they change;
    - ``_encode_field``: a field's value as its PV takes it (a ValueError for a
      value that cannot be shown, before anything is written).
    """

    state_severities: ClassVar[Mapping[str, Mapping[Any, AlarmSeverity]]] = {}
    last: ClassVar[tuple[str, ...]] = ()
    rate_limits: ClassVar[tuple[RateLimit, ...]] = ()

    def __init__(self, prefix: str, view: Any):
        super().__init__(prefix)
        self._channels = {f.name: self.pvdb[f"{self.prefix}{f.name.upper()}"] for f in fields(view)}
        by_channel = {id(self._channels[name]): sev for name, sev in self.state_severities.items()}
        for channel in self.pvdb.values():
            severities = by_channel.get(id(channel))
            describe_record(
                channel, {int(k): v for k, v in severities.items()} if severities else None
            )
        for name in self._channels:
            preset_value(self._channels[name], self._encode_field(name, getattr(view, name)))
        for name in self.state_severities:
            preset_alarm(self._channels[name], *self._alarm(name, view))
        self._shown = replace(view)

    def _encode_field(self, name: str, value: Any) -> Any:
        raise NotImplementedError

    def _alarm(self, name: str, view: Any) -> tuple[AlarmStatus, AlarmSeverity]:
        return props.state_alarm(self.state_severities[name], int(getattr(view, name)))

    def shown_put(self, name: str, value: Any) -> None:
        """A put the controller accepted: its value counts as shown."""
        setattr(self._shown, name, value)

    async def publish(self, view: Any) -> None:
        """Show ``view``: write only the fields that differ from what is shown.

        A PV's value is what was last published, or put and accepted since. Raises
        ValueError, writing nothing, for a value a PV cannot show (a state outside
        its enum).
        """
        changed = [
            f.name for f in fields(view) if getattr(view, f.name) != getattr(self._shown, f.name)
        ]
        if not changed:
            return
        order = {name: i + 1 for i, name in enumerate(self.last)}
        changed.sort(key=lambda name: order.get(name, 0))
        encoded = {name: self._encode_field(name, getattr(view, name)) for name in changed}
        for name in changed:
            channel = self._channels[name]
            if name in self.state_severities:
                status, severity = self._alarm(name, view)
                if (status, severity) != (channel.alarm.status, channel.alarm.severity):
                    # One event carrying value and alarm; DBE_ALARM so alarm-only
                    # subscribers (alarm servers) hear it too.
                    await channel.write(
                        encoded[name],
                        verify_value=False,
                        flags=SubscriptionType.DBE_ALARM,
                        status=status,
                        severity=severity,
                    )
                    continue
            # verify_value=False: publishing must not run the putters.
            await channel.write(encoded[name], verify_value=False)
        self._shown = replace(view)


def char_waveform_text(text: str, limit: int, *, keep_end: bool = False) -> str:
    """``text`` as a char waveform value: UTF-8 bytes, at most ``limit`` of them.

    caproto sends a ``str`` one latin-1 byte per character, so the UTF-8 bytes
    are carried as latin-1 characters: clients decoding UTF-8 (EPICS 7, CS-Studio,
    pyepics) see the text, and no character can make a read fail. A cut never
    splits a character. ``keep_end`` keeps the last bytes (for LOG).
    """
    raw = text.encode("utf-8", "replace")
    if len(raw) > limit:
        raw = raw[-limit:] if keep_end else raw[:limit]
        raw = raw.decode("utf-8", "ignore").encode("utf-8")
    return raw.decode("latin-1")
