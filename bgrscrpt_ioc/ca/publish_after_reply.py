"""The monitor updates a put causes, published once the put's reply is written.

caproto publishes inside ``ChannelData.write``: it reads the new value once per
subscribed DBR type and hands each update on, all before the put's reply can
be written. With a client waiting for that reply (``caput wait=True``,
pyepics' ``put(wait=True)``), that reading delayed every reply.

While a circuit carries out a batch of requests (:func:`held_publications`), a
:class:`PublishAfterReply` channel only notes that it must publish (one note per
channel, the flags of its writes joined); :func:`publish_held` then publishes
each noted channel once, reading the value it has then. The channels publish as
soon as a reply of the batch is written (:func:`publish_noted`), before the
circuit waits for a client that is behind, and what is left at the batch's end,
in the same turn of the loop (each circuit's sender then sends what they
published). Nothing else changes: a read later in the same batch reads the
channel itself, not its updates. Every PV and record field of the IOC is such a
channel (:class:`~bgrscrpt_ioc.ca.epics_reads.BaseReads`), so a record's RVAL
that follows its VAL publishes after the reply too.

The batch is marked in a context variable, so only the task carrying it out
(and a task it starts while the batch is open) defers; once the batch is over
its mark is closed and everything publishes at once again.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar
from typing import Any

log = logging.getLogger(__name__)


class HeldPublications:
    """The channels a batch of requests wrote to, in order, with their publish flags."""

    __slots__ = ("open", "pending")

    def __init__(self) -> None:
        self.open = True
        self.pending: dict[int, tuple[Any, int]] = {}

    def note(self, channel: Any, flags: int) -> None:
        key = id(channel)
        earlier = self.pending.get(key)
        self.pending[key] = (channel, flags if earlier is None else earlier[1] | flags)


_BATCH: ContextVar[HeldPublications | None] = ContextVar("bgrscrpt_held_publications", default=None)


def held_publications() -> HeldPublications:
    """Start holding the publications of this task's writes (until :func:`publish_held`)."""
    held = HeldPublications()
    _BATCH.set(held)
    return held


async def publish_noted() -> None:
    """Publish what this task's open batch has noted so far; the batch stays open.

    Called once a reply is written and before the circuit waits for its client to
    take more: a client that stopped reading must not hold back the updates every
    other client is owed for the writes it made."""
    held = _BATCH.get()
    if held is not None and held.open and held.pending:
        await _publish(held)


async def publish_held(held: HeldPublications) -> None:
    """Close ``held`` and publish every channel it noted, once each; never raises."""
    held.open = False  # from here on, this task's writes publish at once
    await _publish(held)


async def _publish(held: HeldPublications) -> None:
    pending, held.pending = held.pending, {}
    for channel, flags in pending.values():
        try:
            await channel.publish_now(flags)
        except Exception:  # a bug: the other channels still publish
            log.exception("the monitor update of %s could not be published", channel)


class PublishAfterReply:
    """Mixin for caproto ``ChannelData``: publish after the batch's replies (module docstring)."""

    async def publish(self, flags: int) -> None:
        held = _BATCH.get()
        if held is not None and held.open:
            held.note(self, flags)
            return
        await self.publish_now(flags)

    async def publish_now(self, flags: int) -> None:
        await super().publish(flags)  # type: ignore[misc]
