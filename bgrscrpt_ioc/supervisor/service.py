"""Every slot of one IOC: the runners, their spawn adapters, their beat and their end.

The slots' counterpart of ``recovery.service.WatchService``. Build it on the
IOC's loop, hand its runners to ``build_pvdb`` as controllers, call
:meth:`SlotService.publish_through` with the groups that come back, then
:meth:`open` and :meth:`start`; :meth:`shutdown` stops every script.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..ca.publisher import Publisher
from ..settings import SlotSettings
from ..state_db import StateDB
from ..var_dir import VarDirUnusable
from . import accounting
from .containment import Containment
from .guardian import Guardian
from .launcher import ScriptLauncher
from .runner import SlotRunner


class SlotService:
    """One :class:`SlotRunner` per slot, each with a :class:`ScriptLauncher`.

    Raises VarDirUnusable when a slot's log file cannot be opened (a directory,
    not writable, …).
    """

    def __init__(
        self,
        slots: tuple[SlotSettings, ...],
        *,
        config_dir: Path,
        var_dir: Path,
        prefix: str,
        db: StateDB,
        guardian: Guardian,
        publisher: Publisher,
        own_ca_address: str | None = None,
    ):
        self.guardian = guardian
        self.runners: list[SlotRunner] = []
        for slot in slots:
            try:
                launcher = ScriptLauncher(
                    slot,
                    config_dir=config_dir,
                    var_dir=var_dir,
                    prefix=prefix,
                    guardian=guardian,
                    own_ca_address=own_ca_address,
                )
            except OSError as exc:
                why = f"{exc.strerror or exc}: {exc.filename}"
                raise VarDirUnusable(f"{slot.name}: {why}") from None
            runner = SlotRunner(
                slot, launcher=launcher, db=db, on_change=publisher.notifier(slot.name)
            )
            self.runners.append(runner)

    def publish_through(self, publisher: Publisher, groups: Mapping[str, Any]) -> None:
        """Show each slot on its group (``build_pvdb``'s slot groups) through ``publisher``."""
        for runner in self.runners:
            group = groups[runner.name]
            publisher.add(runner.name, runner.view, group.publish, group.rate_limits)

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Listen for the scripts' notices; timers may run from now on."""
        for runner in self.runners:
            runner.open(loop)

    def start(self) -> None:
        """At IOC start-up: start each slot whose script exists."""
        for runner in self.runners:
            runner.start_if_present()

    def beat(self, now: float) -> None:
        """Once a second, with the IOC's HEARTBEAT: each healthy slot's HEARTBEAT."""
        for runner in self.runners:
            runner.beat(now)

    def accountant(self, containment: Containment) -> accounting.Accountant:
        """Each slot's CPU, RSS and process count every 2 s, and its memory limit."""
        guardian = self.guardian

        def keeper() -> tuple[int | None, list[int]]:
            return guardian.pid, list(guardian.leaders().values())

        meters = [
            accounting.SlotMeter(
                r.name, containment.instance, containment.slots.get(r.name), r.leader, keeper
            )
            for r in self.runners
        ]
        return accounting.Accountant(list(zip(meters, self.runners, strict=True)))

    async def shutdown(self) -> None:
        """Stop every script (SIGTERM, SIGKILL after its stop timeout) and wait for them.

        Each runner closes whatever happens; one that was never opened (the IOC
        stopped before serving) has nothing to stop, and its failure to wait says
        nothing worth a line.
        """
        await asyncio.gather(*(r.shutdown() for r in self.runners), return_exceptions=True)
