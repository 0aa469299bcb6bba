"""The IOC's whole PV database: the IOC-wide group and one group per slot."""

from __future__ import annotations

from caproto import ChannelData

from .channels import quiet_rejected_puts
from .ioc_pvs import LOOP_LAG_HIGH, LOOP_LAG_HIHI, IocPVs
from .procserv_control_pvs import ProcServControlPVs, SlotAndProcServ, procserv_prefix
from .slot_pvs import SlotController, SlotPVs, SlotView
from .watch_pvs import WatchPVSet, WatchView, build_watch_pvs

IOC_GROUP = "BGRSCRPT"
"""The IOC-wide PVs live under ``f"{prefix}{IOC_GROUP}:"``."""


def build_pvdb(
    prefix: str,
    slots: list[tuple[str, SlotController, SlotView]],
    watches: WatchPVSet | None = None,
    *,
    lag_limits: tuple[float, float] = (LOOP_LAG_HIGH, LOOP_LAG_HIHI),
    procserv_control: bool = False,
) -> tuple[dict[str, ChannelData], IocPVs, dict[str, SlotPVs]]:
    """Create the PV groups for ``start_server``.

    ``slots`` holds (slot name such as "BGRSCRPT_01", controller, initial view);
    ``watches`` the alarm-recovery groups (``watch_pvs.build_watch_pvs``; the IOC
    always passes them, its IOC-wide DRYRUN and NAMES served even with no watch);
    ``lag_limits`` LOOP_LAG's HIGH and HIHI (ms).
    Returns the merged pvdb, the IOC-wide group and the slot groups by slot
    name. Also keeps caproto's log of a refused put to one line. With
    ``procserv_control`` each slot is also served as procServControl serves an IOC
    (``$(P)CS:PS:<slot>:``, :mod:`.procserv_control_pvs`), and publishing a slot's
    group publishes those too.
    """
    quiet_rejected_puts()
    ioc = IocPVs(f"{prefix}{IOC_GROUP}:", lag_high=lag_limits[0], lag_hihi=lag_limits[1])
    groups = {
        name: SlotPVs(f"{prefix}{name}:", controller, view) for name, controller, view in slots
    }
    pvdb: dict[str, ChannelData] = dict(ioc.pvdb)
    for name, group in groups.items():
        clash = pvdb.keys() & group.pvdb.keys()
        if clash:
            raise ValueError(f"slot {name}: PV names already in use: {sorted(clash)}")
        pvdb.update(group.pvdb)
    if procserv_control:
        for name, controller, view in slots:
            procserv = ProcServControlPVs(procserv_prefix(prefix, name), name, controller, view)
            clash = pvdb.keys() & procserv.pvdb.keys()
            if clash:
                raise ValueError(f"slot {name}: PV names already in use: {sorted(clash)}")
            pvdb.update(procserv.pvdb)
            groups[name] = SlotAndProcServ(groups[name], procserv)  # type: ignore[assignment]
    if watches is not None:
        watch_pvdb = watches.pvdb
        clash = pvdb.keys() & watch_pvdb.keys()
        if clash:
            raise ValueError(f"watch PV names already in use: {sorted(clash)}")
        pvdb.update(watch_pvdb)
    return pvdb, ioc, groups


class _NoController:
    """Stands in for the runner when only the names are wanted."""

    def start(self) -> None: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...
    def set_autorestart(self, mode: int) -> None: ...
    def set_watchdog(self, seconds: float) -> None: ...


class _NoWatchController:
    """Stands in for the watch runners when only the names are wanted."""

    def set_enabled(self, enabled: bool) -> None: ...
    def restart_now(self) -> None: ...
    def set_dry_run(self, dry_run: bool) -> None: ...


def pv_names(
    prefix: str,
    slot_names: list[str],
    watch_names: list[str] | tuple[str, ...] = (),
    procserv_control: bool = False,
) -> list[str]:
    """Every record name the IOC serves (no fields), for ``--list-pvs``.

    ``watch_names`` are the ``[[watch]]`` names; with none, only the IOC-wide watch
    PVs (DRYRUN, NAMES). Built from the same groups as the server, so the list
    cannot drift.
    """
    controller = _NoController()
    nobody = _NoWatchController()
    watches = build_watch_pvs(prefix, [(name, nobody, WatchView()) for name in watch_names], nobody)
    pvdb, _, _ = build_pvdb(
        prefix,
        [(slot, controller, SlotView()) for slot in slot_names],
        watches,
        procserv_control=procserv_control,
    )
    return list(pvdb)
