"""procServControl's PVs for each slot, ``$(P)CS:PS:BGRSCRPT_NN:`` (``--procserv-control``).

IBEX starts, stops and restarts an IOC through procServControl: its block server
(which the IBEX GUI's IOC list drives) puts 1 to ``START``, ``STOP``,
``RESTART`` or ``TOGGLE`` (``busy`` records, Done/Busy), reads ``STATUS``
(mbbi: Running, Shutdown, procServ Stopped, Invalid portname) upper-cased, reads
``AUTORESTART`` (bi Off/On) and counts a restart as pending while ``RESTART``
reads Busy. With this option the IOC serves the same records, with the same
types and state names, for each of its slots, so that the IBEX GUI and
InstrumentScripts' ``restart_ioc_when_pv_in_alarm`` control the slots as they
controlled the old BGRSCRPT_NN procServ IOCs. Off by default: on an instrument
a real procServControl may serve those names.

How they map onto a slot:

- ``START``, ``STOP``, ``RESTART``: the slot's own START, STOP, RESTART (put 1;
  they read back Done once the command is given, as procServControl's do);
- ``STATUS``: Running while the script's process exists (STARTING, RUNNING,
  STOPPING), Shutdown (MAJOR, as the template's default) otherwise;
- ``AUTORESTART``: On unless the slot's AUTORESTART is Off; ``TOGGLE`` switches
  it Off, or back to the mode it had (On failure when it never had another);
- ``IOCOUT``: the slot's LOG; ``IOCNAME``, ``PORT``: the slot's name;
  ``IOCDESC``: what it runs; ``SHOWOUT`` (bo No/Yes) is kept but changes nothing;
  ``CONPORT``, ``LOGPORT``: 0, there being no console port.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NoReturn

from caproto import AlarmSeverity, ChannelType, SkipWrite, SubscriptionType
from caproto.server import PVGroup, pvproperty
from caproto.server.records import BoFields, register_record

from ..core.slot import SlotState
from . import properties as props
from .channels import CheckedEnum, describe_record, preset_alarm, preset_value
from .slot_pvs import SlotController, SlotView
from .view_group import char_waveform_text

PROCSERV_GROUP = "CS:PS:"
"""A slot's procServControl PVs live under ``f"{prefix}{PROCSERV_GROUP}{slot}:"``."""

STATUS_LABELS = ("Running", "Shutdown", "procServ Stopped", "Invalid portname")
RUNNING, SHUTDOWN = 0, 1
STATUS_SEVERITY = {
    SHUTDOWN: AlarmSeverity.MAJOR_ALARM,
    2: AlarmSeverity.MAJOR_ALARM,
    3: AlarmSeverity.MAJOR_ALARM,
}
BUSY_LABELS = ("Done", "Busy")
OFF_ON = ("Off", "On")
NO_YES = ("No", "Yes")
IOCOUT_LENGTH = 5120
PROCESS_EXISTS = (SlotState.STARTING, SlotState.RUNNING, SlotState.STOPPING)


@register_record
class BusyFields(BoFields):
    """The fields of synApps' ``busy`` record (a bo whose states are Done and Busy)."""

    _record_type = "busy"


def _busy(name: str, doc: str) -> pvproperty:
    return pvproperty(
        name=name, dtype=CheckedEnum, enum_strings=BUSY_LABELS, value="Done", record="busy",
        doc=doc, alarm_group=name,
    )  # fmt: skip


def _text(name: str, doc: str, value: str = "") -> pvproperty:
    return pvproperty(
        name=name, dtype=ChannelType.STRING, value=value, read_only=True, record="stringin",
        doc=doc, alarm_group=name,
    )  # fmt: skip


def procserv_status(state: int) -> int:
    """The procServControl STATUS index for a slot state: is there a process?"""
    return RUNNING if SlotState(state) in PROCESS_EXISTS else SHUTDOWN


@dataclass
class _Shown:
    status: int = SHUTDOWN
    autorestart: int = 1  # the slot's AUTORESTART index
    log: str = ""


class ProcServControlPVs(PVGroup):
    """One slot as procServControl shows an IOC."""

    iocname = _text("IOCNAME", "IOC Name")
    iocdesc = _text("IOCDESC", "IOC Description")
    autorestart = props.state("AUTORESTART", OFF_ON, "Autorestart readback", record="bi")
    showout = pvproperty(
        name="SHOWOUT", dtype=CheckedEnum, enum_strings=NO_YES, value="Yes", record="bo",
        doc="Show IOC output", alarm_group="SHOWOUT",
    )  # fmt: skip
    status = props.state("STATUS", STATUS_LABELS, "Process status")
    toggle = _busy("TOGGLE", "Autorestart toggle")
    start = _busy("START", "Start IOC")
    stop = _busy("STOP", "Stop IOC")
    restart = _busy("RESTART", "Restart IOC")
    iocout = props.text("IOCOUT", "Last 20 lines of IOC output", IOCOUT_LENGTH)
    port = _text("PORT", "conserver/procServ IOC name")
    conport = props.counter("CONPORT", "procServ IOC console port number")
    logport = props.counter("LOGPORT", "procServ IOC log port number")

    def __init__(self, prefix: str, slot: str, controller: SlotController, view: SlotView):
        self.controller = controller
        self._resume_mode = view.autorestart or 1  # what TOGGLE switches back on
        super().__init__(prefix)
        status_pv = self.pvdb[f"{self.prefix}STATUS"]
        for channel in self.pvdb.values():
            describe_record(channel, STATUS_SEVERITY if channel is status_pv else None)
        preset_value(self.pvdb[f"{self.prefix}IOCNAME"], slot)
        preset_value(self.pvdb[f"{self.prefix}PORT"], slot)
        script = view.script.rsplit("/", 1)[-1] or "background script"
        preset_value(self.pvdb[f"{self.prefix}IOCDESC"], f"bgrscrpt_ioc: {script}"[:39])
        self._mode = int(view.autorestart)  # the slot's AUTORESTART, as last known
        self._shown = _Shown()
        self._preset(view)

    def _preset(self, view: SlotView) -> None:
        shown = self._state_of(view)
        preset_value(self.pvdb[f"{self.prefix}STATUS"], STATUS_LABELS[shown.status])
        preset_alarm(
            self.pvdb[f"{self.prefix}STATUS"], *props.state_alarm(STATUS_SEVERITY, shown.status)
        )
        preset_value(self.pvdb[f"{self.prefix}AUTORESTART"], OFF_ON[shown.autorestart != 0])
        preset_value(
            self.pvdb[f"{self.prefix}IOCOUT"],
            char_waveform_text(shown.log, IOCOUT_LENGTH, keep_end=True),
        )
        self._shown = shown

    @staticmethod
    def _state_of(view: SlotView) -> _Shown:
        return _Shown(procserv_status(view.status), int(view.autorestart), view.log)

    # ---- puts ----------------------------------------------------------------------

    # caproto's pattern: a putter or startup hook takes its pvproperty's name (the
    # decorator returns the property), which mypy reads as a redefinition.
    @start.putter  # type: ignore[no-redef]
    async def start(self, instance: Any, value: str) -> NoReturn:
        _command(value, self.controller.start)

    @stop.putter  # type: ignore[no-redef]
    async def stop(self, instance: Any, value: str) -> NoReturn:
        _command(value, self.controller.stop)

    @restart.putter  # type: ignore[no-redef]
    async def restart(self, instance: Any, value: str) -> NoReturn:
        _command(value, self.controller.restart)

    @toggle.putter  # type: ignore[no-redef]
    async def toggle(self, instance: Any, value: str) -> NoReturn:
        _command(value, self._toggle)

    def _toggle(self) -> None:
        if self._mode != 0:
            self._resume_mode = self._mode
            mode = 0
        else:
            mode = self._resume_mode or 1
        self.controller.set_autorestart(mode)
        self._mode = mode

    # ---- state out -------------------------------------------------------------------

    async def publish(self, view: SlotView) -> None:
        """Show the slot's ``view`` the procServControl way (only what changed)."""
        new = self._state_of(view)
        self._mode = new.autorestart
        if new.autorestart != 0:
            self._resume_mode = new.autorestart
        if new.status != self._shown.status:
            status, severity = props.state_alarm(STATUS_SEVERITY, new.status)
            await self.status.write(
                STATUS_LABELS[new.status],
                verify_value=False,
                flags=SubscriptionType.DBE_ALARM,
                status=status,
                severity=severity,
            )
        if (new.autorestart != 0) != (self._shown.autorestart != 0):
            await self.autorestart.write(OFF_ON[new.autorestart != 0], verify_value=False)
        if new.log != self._shown.log:
            text = char_waveform_text(new.log, IOCOUT_LENGTH, keep_end=True)
            await self.iocout.write(text, verify_value=False)
        self._shown = new


def _command(value: str, action: Any) -> NoReturn:
    """A busy command: "Busy" (1) runs it; it reads back Done, the command being given."""
    if value == "Busy":
        action()  # a ValueError rejects the put
    raise SkipWrite()


class SlotAndProcServ:
    """A slot's own group and its procServControl group, published together.

    Stands where the IOC keeps the slot's group: ``publish`` shows a view on both;
    anything else is the slot group's.
    """

    def __init__(self, slot_group: Any, procserv: ProcServControlPVs):
        self.slot_group = slot_group
        self.procserv = procserv

    async def publish(self, view: SlotView) -> None:
        await self.slot_group.publish(view)
        await self.procserv.publish(view)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.slot_group, name)


def procserv_prefix(prefix: str, slot: str) -> str:
    """``$(P)CS:PS:<slot>:``."""
    return f"{prefix}{PROCSERV_GROUP}{slot}:"
