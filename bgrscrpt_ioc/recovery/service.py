"""Every watch of one IOC: one caproto client context, the monitors, the runners, DRYRUN.

The IOC builds this whether or not its settings hold a ``[[watch]]``: DRYRUN and
NAMES are served always, and with no watch nothing else happens.
"""

from __future__ import annotations

import asyncio
import logging

from ..ca.client import Context
from ..ca.watch_pvs import WatchPVSet, build_watch_pvs
from ..settings import WatchSettings
from ..state_db import StateDB
from . import procserv
from .backend import MODE_JOURNAL, make_backend
from .monitor import PvMonitor, PvUpdate
from .runner import WatchRunner

log = logging.getLogger("bgrscrpt_ioc.watch")

CLOSE_TIMEOUT = 5.0


class WatchService:
    """Owns the watches' Channel Access client and their runners.

    Build it on the IOC's loop, take :attr:`pvs` into the pvdb, then
    :meth:`start` once the server runs; :meth:`close` at shutdown.
    """

    def __init__(self, watches: tuple[WatchSettings, ...], *, prefix: str, db: StateDB):
        self.db = db
        closed = db.close_open_watch_restarts()
        if closed:
            log.warning("%d restart(s) were cut short when the IOC last stopped", closed)
        self._dry_run = db.setting("watch", "dryrun") == "1"
        self.context = Context(timeout=None)
        self.monitor = PvMonitor(self.context, self._dispatch, on_reason=self._dispatch_reason)
        self.runners = [
            WatchRunner(
                w,
                prefix=prefix,
                db=db,
                monitor=self.monitor,
                dry_run=self.dry_run,
                backend=make_backend(w, context=self.context, prefix=prefix, db=db),
            )
            for w in watches
        ]
        self._by_pv: dict[str, list[WatchRunner]] = {}
        for runner in self.runners:
            for pv in runner.settings.pvs:
                self._by_pv.setdefault(pv, []).append(runner)
        self.pvs: WatchPVSet = build_watch_pvs(
            prefix, [(r.name, r, r.view()) for r in self.runners], self, self._dry_run
        )
        for runner in self.runners:
            runner.group = self.pvs.watches[runner.name]
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = False  # the client context was used (only then is there one to close)

    def dry_run(self) -> bool:
        return self._dry_run

    def set_dry_run(self, dry_run: bool) -> None:
        """DRYRUN put: kept in the state database."""
        self._dry_run = dry_run
        self.db.set_setting("watch", "dryrun", "1" if dry_run else "0")
        log.warning(
            "watches: DRYRUN %s", "On: restarts are decided but not sent" if dry_run else "Off"
        )

    def _dispatch(self, update: PvUpdate) -> None:
        for runner in self._by_pv.get(update.name, ()):
            try:
                runner.on_update(update)
            except Exception:  # one watch's bug must not silence the others
                log.exception("watch %s: handling %s failed", runner.name, update.name)

    def _dispatch_reason(self, name: str, reason: str) -> None:
        for runner in self._by_pv.get(name, ()):
            try:
                runner.on_reason(name, reason)
            except Exception:  # one watch's bug must not silence the others
                log.exception("watch %s: handling %s failed", runner.name, name)

    async def start(self) -> None:
        """Subscribe to every watched PV and start the runners."""
        for endpoint, mode in self.db.settings_of(MODE_JOURNAL).items():
            self._tasks.append(asyncio.create_task(self._put_mode_back(endpoint, mode)))
        for runner in self.runners:
            runner.start()
        as_string = {
            pv
            for r in self.runners
            if any(isinstance(v, str) for v in r.settings.values)
            for pv in r.settings.pvs
        }
        if self._by_pv:
            self._subscribed = True
        await self.monitor.add([pv for pv in self._by_pv if pv not in as_string])
        await self.monitor.add(as_string, as_string=True)
        if self.runners:
            log.info("watching %d PV(s) for %d watch(es)", len(self._by_pv), len(self.runners))

    async def _put_mode_back(self, endpoint: str, mode: str) -> None:
        """A restart cut short (the IOC died) left procServ's auto restart changed."""
        try:
            was = await procserv.restore_mode(endpoint, mode)
        except procserv.ProcServError as exc:
            log.warning("cannot put procServ's auto restart back to %s: %s", mode, exc)
            return  # the next restart through it puts it back
        self.db.clear_setting(MODE_JOURNAL, endpoint)
        if was != mode:
            log.warning(
                "procServ at %s: auto restart put back to %s (a restart cut short left it %s)",
                endpoint,
                mode,
                was,
            )

    async def close(self) -> None:
        """Stop every watch, then the Channel Access client (bounded: shutdown goes on)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for runner in self.runners:
            await runner.close()
        if not self._subscribed:
            return  # caproto cannot disconnect a context that never searched
        try:
            async with asyncio.timeout(CLOSE_TIMEOUT):
                await self.monitor.close()
                await self.context.disconnect()
        except TimeoutError:
            log.warning("the watches' CA client did not close within %g s", CLOSE_TIMEOUT)
