"""The PVs of alarm recovery, ``$(P)BGRSCRPT:WATCH:`` (docs/recovery.md).

A translation layer only: puts become calls on a :class:`WatchController` (or
the :class:`DryRunController`), and ``publish`` (:class:`.view_group.ViewGroup`)
shows a :class:`WatchView`. Every decision belongs to the watch runner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from caproto import AlarmSeverity, ChannelType, SkipWrite
from caproto.server import pvproperty

from ..core.watch import ALARM_LABELS, NAMES_LIMIT, WatchState
from . import properties as props
from .channels import describe_record, preset_value
from .epics_reads import BasePVGroup
from .properties import OFF_ON
from .view_group import ViewGroup, char_waveform_text

WATCH_GROUP = "BGRSCRPT:WATCH"
"""Watch PVs live under ``f"{prefix}{WATCH_GROUP}:<name>:"``; DRYRUN, NAMES under ``…:WATCH:``."""

STATE_LABELS = tuple(state.name for state in WatchState)
STATE_SEVERITY: dict[int, AlarmSeverity] = {
    WatchState.FAILED: AlarmSeverity.MINOR_ALARM,
    WatchState.LOCKOUT: AlarmSeverity.MAJOR_ALARM,
}
"""STATE alarm severities; every other state is NO_ALARM."""

ALARM_SEVERITY = {
    1: AlarmSeverity.MINOR_ALARM,
    2: AlarmSeverity.MAJOR_ALARM,
    3: AlarmSeverity.MAJOR_ALARM,
    4: AlarmSeverity.MAJOR_ALARM,
}
"""ALARM severities by index into ALARM_LABELS: the watch itself works, so never INVALID."""

MSG_LIMIT = 1024


@dataclass
class WatchView:
    """What one watch's PVs show; the watch runner builds it."""

    state: int = 0  # WatchState value
    alarm: int = 0  # index into ALARM_LABELS
    enable: bool = True
    restart_cnt: int = 0
    last_restart: str = ""
    msg: str = ""


class WatchController(Protocol):
    """What a watch's puts call; each may raise ``ValueError(msg)`` to reject the put."""

    def set_enabled(self, enabled: bool) -> None: ...
    def restart_now(self) -> None: ...


class DryRunController(Protocol):
    """What a put to DRYRUN calls."""

    def set_dry_run(self, dry_run: bool) -> None: ...


class WatchPVs(ViewGroup):
    """PVs of one watch. Each PV has its own alarm_group (caproto shares one otherwise)."""

    state = props.state("STATE", STATE_LABELS, "State of the watch")
    alarm = props.state("ALARM", ALARM_LABELS, "Worst severity of the watched PVs")
    enable = props.switch("ENABLE", "Watch on; On again clears LOCKOUT", value="On")
    restart = props.switch("RESTART", "Restart the watched IOCs now")
    restart_cnt = props.counter("RESTART_CNT", "Restarts sent by this watch")
    last_restart = pvproperty(
        name="LAST_RESTART",
        alarm_group="LAST_RESTART",
        dtype=ChannelType.STRING,
        value="",
        read_only=True,
        record="stringin",
        doc="Time of the last restart (ISO)",
    )
    msg = props.text("MSG", "Last event in words", MSG_LIMIT)

    state_severities = {"state": STATE_SEVERITY, "alarm": ALARM_SEVERITY}
    last = ("state",)

    def __init__(self, prefix: str, controller: WatchController, view: WatchView):
        """``prefix`` is the whole record prefix, e.g. ``f"{P}BGRSCRPT:WATCH:ZF:"``."""
        self.controller = controller
        super().__init__(prefix, view)

    # caproto's pattern: a putter or startup hook takes its pvproperty's name (the
    # decorator returns the property), which mypy reads as a redefinition.
    @enable.putter  # type: ignore[no-redef]
    async def enable(self, instance: Any, value: str) -> str:
        self.controller.set_enabled(value == "On")  # a ValueError rejects the put
        self.shown_put("enable", value == "On")
        return value

    @restart.putter  # type: ignore[no-redef]
    async def restart(self, instance: Any, value: str) -> str:
        if value == "On":
            self.controller.restart_now()
        raise SkipWrite()  # a command: reads back Off, no monitor update

    def _encode_field(self, name: str, value: Any) -> Any:
        """The PV value of the WatchView field ``name``."""
        if name == "state":
            return STATE_LABELS[value]
        if name == "alarm":
            return ALARM_LABELS[value]
        if name == "enable":
            return OFF_ON[bool(value)]
        if name == "restart_cnt":
            return int(value)
        if name == "last_restart":
            return value[:39]
        return char_waveform_text(value, MSG_LIMIT)


def names_text(names: list[str] | tuple[str, ...]) -> str:
    """NAMES: the watch names separated by single spaces ("" when there are none)."""
    text = " ".join(names)
    if len(text) > NAMES_LIMIT:
        raise ValueError(f"the watch names take {len(text)} characters; NAMES holds {NAMES_LIMIT}")
    return text


class WatchIocPVs(BasePVGroup):
    """The IOC-wide watch PVs: DRYRUN, and NAMES (which watches this IOC has).

    Served whether or not the settings hold a ``[[watch]]``, so a client can
    always ask an IOC which watches it has.
    """

    dryrun = props.switch("DRYRUN", "Decide and log, but send no restart")
    names = props.text("NAMES", "Names of the watches, space-separated", NAMES_LIMIT)

    def __init__(
        self,
        prefix: str,
        controller: DryRunController,
        dry_run: bool = False,
        names: list[str] | tuple[str, ...] = (),
    ):
        """``prefix`` is ``f"{P}BGRSCRPT:WATCH:"``; ``names`` the watches, in settings order."""
        self.controller = controller
        super().__init__(prefix)
        for channel in self.pvdb.values():
            describe_record(channel)
        preset_value(self.dryrun, OFF_ON[bool(dry_run)])
        preset_value(self.names, names_text(names))

    # caproto's pattern: a putter or startup hook takes its pvproperty's name (the
    # decorator returns the property), which mypy reads as a redefinition.
    @dryrun.putter  # type: ignore[no-redef]
    async def dryrun(self, instance: Any, value: str) -> str:
        self.controller.set_dry_run(value == "On")
        return value


@dataclass
class WatchPVSet:
    """Every watch PV group of one IOC, ready to merge into the pvdb."""

    ioc: WatchIocPVs
    watches: dict[str, WatchPVs]

    @property
    def pvdb(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.ioc.pvdb)
        for name, group in self.watches.items():
            clash = out.keys() & group.pvdb.keys()
            if clash:
                raise ValueError(f"watch {name}: PV names already in use: {sorted(clash)}")
            out.update(group.pvdb)
        return out


def build_watch_pvs(
    prefix: str,
    watches: list[tuple[str, WatchController, WatchView]],
    dry_run: DryRunController,
    dry_run_on: bool = False,
) -> WatchPVSet:
    """The IOC-wide group (DRYRUN, NAMES) and one group per watch (name, controller, view).

    ``watches`` may be empty: the IOC-wide group is served all the same.
    """
    base = f"{prefix}{WATCH_GROUP}:"
    return WatchPVSet(
        WatchIocPVs(base, dry_run, dry_run_on, [name for name, _, _ in watches]),
        {name: WatchPVs(f"{base}{name}:", ctl, view) for name, ctl, view in watches},
    )
