"""How a watch restarts an IOC: one :class:`RestartBackend` per watch, chosen by its ``via``.

The watch runner knows nothing of procServ or Channel Access: it asks its backend
to restart each IOC in turn and shows what the backend says. :func:`make_backend`
builds the backend once, when the watch is built; tests hand the runner a fake.

    via = "procserv"  the IOC's procServ control port (TCP or unix socket)
    via = "pv"        IBEX's procServControl PVs, ``$(P)CS:PS:<IOC>:RESTART``
    via = "peer"      another bgrscrpt_ioc's watch, ``<its prefix>RESTART``, over CA
"""

from __future__ import annotations

import logging
from typing import Any

from ..ca.watch_pvs import WATCH_GROUP
from ..settings import WatchSettings
from ..state_db import StateDB
from . import procserv, pv_backend
from .peer import PeerBackend
from .protocol import RestartBackend, RestartError

__all__ = ["RestartBackend", "RestartError", "make_backend"]

log = logging.getLogger("bgrscrpt_ioc.watch")

MODE_JOURNAL = "procserv-mode"
"""State database settings slot: procServ endpoint -> the auto-restart mode to put back."""


class DbModeJournal:
    """Notes in the state database the procServ modes a restart has yet to put back."""

    def __init__(self, db: StateDB):
        self.db = db

    def mode_changed(self, endpoint: str, found: str) -> None:
        self.db.set_setting(MODE_JOURNAL, endpoint, found)

    def mode_restored(self, endpoint: str) -> None:
        self.db.clear_setting(MODE_JOURNAL, endpoint)


class ProcServBackend:
    """``via = "procserv"``: through each IOC's procServ control port."""

    via = "procServ"

    def __init__(self, endpoints: dict[str, str], db: StateDB):
        self.endpoints = dict(endpoints)
        self.db = db
        self.journal = DbModeJournal(db)

    def label(self, ioc: str) -> str:
        return ioc

    async def restart(self, ioc: str) -> str:
        endpoint = self.endpoints[ioc]
        try:
            result = await procserv.restart(
                endpoint,
                journal=self.journal,
                leave_as=self.db.setting(MODE_JOURNAL, endpoint),
            )
        except procserv.ProcServError as exc:
            raise RestartError(str(exc)) from None
        return (
            f"{ioc} restarted, pid {result.old_pid} -> {result.new_pid} "
            f"(auto restart {result.mode}) in {result.took:.2f} s"
        )


class PvBackend:
    """``via = "pv"``: through IBEX's procServControl PVs under the IOC's own prefix."""

    via = "procServControl"

    def __init__(self, context: Any, prefix: str):
        self.context = context
        self.prefix = prefix

    def label(self, ioc: str) -> str:
        return ioc

    async def restart(self, ioc: str) -> str:
        try:
            shown = await pv_backend.restart(self.context, self.prefix, ioc)
        except pv_backend.PvRestartError as exc:
            raise RestartError(str(exc)) from None
        return f"{ioc} restarted ({shown})"


def make_backend(
    settings: WatchSettings, *, context: Any, prefix: str, db: StateDB
) -> RestartBackend:
    """The backend of the watch ``settings``: ``context`` is the watches' CA client
    (for "pv" and "peer"), ``prefix`` this IOC's PV prefix (for "pv")."""
    if settings.via == "procserv":
        return ProcServBackend(settings.procserv, db)
    if settings.via == "pv":
        return PvBackend(context, prefix)
    if settings.via == "peer":
        own = f"{prefix}{WATCH_GROUP}:{settings.name}:"
        return PeerBackend(context, settings.peer, own=own)
    raise ValueError(f"watch {settings.name}: no restart backend for via = {settings.via!r}")
