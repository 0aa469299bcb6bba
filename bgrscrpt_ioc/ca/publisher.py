"""The one route from the runners to the PVs: coalesced, rate-limited publication.

Each source of PV state (a slot runner, a watch runner, the IOC's own status) is
added once with the function that builds its view and the function that shows a
view on its PV group (``ViewGroup.publish`` for slots and watches). A source
says only that something changed (:meth:`Publisher.notifier`); one task,
:meth:`Publisher.run`, wakes, builds the views of what changed and publishes
them, then waits ``interval`` before the next round: a script printing without
pause or a burst of watch updates costs at most one publication per 50 ms.

Rate limits hold a field back further: a group declares them
(``ViewGroup.rate_limits``, a :class:`~.view_group.RateLimit`), the publisher
enforces them (:class:`~bgrscrpt_ioc.core.ratelimit.HoldBack`). A slot's LOG is
shown at most every ``slot_pvs.LOG_INTERVAL`` unless its state, PID or MSG
changed with it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..core.ratelimit import HoldBack
from .view_group import RateLimit

log = logging.getLogger("bgrscrpt_ioc")

PUBLISH_INTERVAL = 0.05
"""PV updates go out at most this often: bounds CPU under an output flood."""


class _Source:
    def __init__(
        self,
        name: str,
        view: Callable[[float], Any],
        publish: Callable[[Any], Awaitable[None]],
        limits: Sequence[RateLimit],
    ):
        self.name = name
        self.view = view
        self.publish = publish
        self.limits = [(limit, HoldBack(limit.interval, limit.initial)) for limit in limits]


class Publisher:
    """Coalesces change notices into at most one publication per ``interval``.

    Sources may say they changed before they are added (a runner is built before
    its PV group): the notice waits for the source. ``clock`` and ``sleep`` are
    a fake clock's in tests.
    """

    def __init__(
        self,
        *,
        interval: float = PUBLISH_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ):
        self.interval = interval
        self.clock = clock
        self._sleep = sleep
        self._sources: dict[str, _Source] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    def add(
        self,
        name: str,
        view: Callable[[float], Any],
        publish: Callable[[Any], Awaitable[None]],
        limits: Sequence[RateLimit] = (),
    ) -> None:
        """Publish ``publish(view(now))`` whenever ``name`` has changed; sources are
        published in the order they were added."""
        if name in self._sources:
            raise ValueError(f"{name} is already published")
        self._sources[name] = _Source(name, view, publish, limits)
        self.changed(name)

    def notifier(self, name: str) -> Callable[[], None]:
        """What the source ``name`` calls when something it shows changed."""

        def changed() -> None:
            self._dirty.add(name)
            self._wake.set()

        return changed

    def changed(self, name: str | None = None) -> None:
        """``name`` changed; None: look at every source (once a second, for UPTIMEs)."""
        if name is None:
            self._dirty.update(self._sources)
        else:
            self._dirty.add(name)
        self._wake.set()

    async def run(self) -> None:
        """Publish what changed, then wait ``interval``; for ever."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            await self.publish_round()
            await self._sleep(self.interval)

    async def publish_round(self) -> None:
        """Build and show the view of each source that changed (one round of :meth:`run`)."""
        now = self.clock()
        dirty, self._dirty = self._dirty, set()
        for name, source in self._sources.items():
            if name not in dirty:
                continue
            try:
                view = source.view(now)
                for limit, hold in source.limits:
                    event = tuple(getattr(view, field) for field in limit.unless)
                    value, held = hold.show(getattr(view, limit.field), event, now)
                    if held:
                        setattr(view, limit.field, value)
                        self.changed(name)  # the newer value on a later round
                await source.publish(view)
            except Exception:  # a publication problem must never stop the IOC
                log.exception("publishing %s failed", name)
        # Sources added later, or notices for sources not added yet, wait their turn.
        self._dirty |= dirty - self._sources.keys()
