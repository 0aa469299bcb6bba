"""procServControl's PVs per slot (``--procserv-control``): what the template says, and how
they map onto the slot. The IOC end to end is in tests/integration/test_procserv_control.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from caproto import AlarmSeverity, ChannelType

from bgrscrpt_ioc.ca.channels import READONLY_ASG, is_read_only
from bgrscrpt_ioc.ca.procserv_control_pvs import ProcServControlPVs, SlotAndProcServ
from bgrscrpt_ioc.ca.pvdb import build_pvdb, pv_names
from bgrscrpt_ioc.ca.slot_pvs import SlotView
from bgrscrpt_ioc.core.slot import SlotState
from devsupport.dbparse import parse_file
from tests.unit.test_templates import CA_TYPE, _same, enum_strings

ROOT = Path(__file__).resolve().parents[2]
PROCSERV_DB = ROOT / "db_templates" / "bgrscrpt_procserv.db"
PREFIX = "PS:"
SLOTS = ["BGRSCRPT_01", "BGRSCRPT_02"]
TYPES = {**CA_TYPE, "busy": ChannelType.ENUM}


class Controller:
    def __init__(self):
        self.calls: list[tuple] = []

    def start(self) -> None:
        self.calls.append(("start",))

    def stop(self) -> None:
        self.calls.append(("stop",))

    def restart(self) -> None:
        self.calls.append(("restart",))

    def set_autorestart(self, mode: int) -> None:
        self.calls.append(("autorestart", mode))

    def set_watchdog(self, seconds: float) -> None:
        self.calls.append(("watchdog", seconds))


@pytest.fixture(scope="module")
def templates():
    records = []
    for slot in SLOTS:
        records += parse_file(str(PROCSERV_DB), {"P": PREFIX, "SLOT": slot})
    return {record.name: record for record in records}


@pytest.fixture
def ioc():
    pvdb, _, groups = build_pvdb(
        PREFIX, [(slot, Controller(), SlotView()) for slot in SLOTS], procserv_control=True
    )
    return pvdb, groups


def test_off_by_default():
    assert not [name for name in pv_names(PREFIX, SLOTS) if ":CS:PS:" in f":{name}"]


def test_the_ioc_serves_exactly_the_template(templates, ioc):
    pvdb, _ = ioc
    served = {name for name in pvdb if name.startswith(f"{PREFIX}CS:PS:")}
    assert served == set(templates)
    listed = set(pv_names(PREFIX, SLOTS, procserv_control=True))
    assert {n for n in listed if n.startswith(f"{PREFIX}CS:PS:")} == set(templates)


def test_same_record_types_ca_types_states_and_lengths(templates, ioc):
    pvdb, _ = ioc
    for name, record in templates.items():
        channel = pvdb[name]
        assert channel.record_type == record.type, name
        expected = ChannelType.CHAR if record.type == "waveform" else TYPES[record.type]
        assert channel.data_type == expected, name
        if expected == ChannelType.ENUM:
            states = enum_strings(record)
            if record.type == "busy":  # a bo as far as its states go
                states = [record.fields["ZNAM"], record.fields["ONAM"]]
            assert list(channel.enum_strings) == states, name
        if record.type == "waveform":
            assert channel.max_length == int(record.fields["NELM"]), name
        assert is_read_only(channel) == (record.fields.get("ASG") == READONLY_ASG), name


async def test_every_template_field_reads_the_same(templates, ioc):
    pvdb, _ = ioc
    for name, record in templates.items():
        for field, expected in record.fields.items():
            if field == "FTVL":  # UCHAR in procServControl's; caproto's char waveform says CHAR
                continue
            channel = pvdb[name].fields[field]
            await channel.read(channel.data_type)
            assert _same(expected, channel.value), f"{name}.{field}: {channel.value!r}"
        assert pvdb[name].fields["RTYP"].value == record.type


def group_for(view: SlotView | None = None) -> tuple[ProcServControlPVs, Controller]:
    controller = Controller()
    view = view or SlotView()
    group = ProcServControlPVs("X:CS:PS:BGRSCRPT_01:", "BGRSCRPT_01", controller, view)
    return group, controller


async def test_busy_commands_run_the_slot_and_read_back_done():
    group, controller = group_for()
    for pv, call in (("START", "start"), ("STOP", "stop"), ("RESTART", "restart")):
        channel = group.pvdb[f"X:CS:PS:BGRSCRPT_01:{pv}"]
        await channel.write("Busy")
        assert controller.calls[-1] == (call,)
        assert channel.value == "Done"
        before = len(controller.calls)
        await channel.write(0)  # Done: nothing to do
        assert len(controller.calls) == before


async def test_a_bad_put_is_refused_and_changes_nothing():
    group, controller = group_for()
    channel = group.pvdb["X:CS:PS:BGRSCRPT_01:START"]
    for bad in (2, "Go", -1):
        with pytest.raises(ValueError):
            await channel.write(bad)
    assert controller.calls == [] and channel.value == "Done"


@pytest.mark.parametrize(
    ("state", "label", "severity"),
    [
        (SlotState.RUNNING, "Running", AlarmSeverity.NO_ALARM),
        (SlotState.STARTING, "Running", AlarmSeverity.NO_ALARM),
        (SlotState.STOPPING, "Running", AlarmSeverity.NO_ALARM),
        (SlotState.STOPPED, "Shutdown", AlarmSeverity.MAJOR_ALARM),
        (SlotState.BACKOFF, "Shutdown", AlarmSeverity.MAJOR_ALARM),
        (SlotState.EXITED, "Shutdown", AlarmSeverity.MAJOR_ALARM),
        (SlotState.FATAL, "Shutdown", AlarmSeverity.MAJOR_ALARM),
    ],
)
async def test_status_says_whether_there_is_a_process(state, label, severity):
    group, _ = group_for(SlotView(status=int(SlotState.RUNNING)))
    await group.publish(SlotView(status=int(state), log="line 1\nline 2"))
    status = group.pvdb["X:CS:PS:BGRSCRPT_01:STATUS"]
    assert (status.value, status.alarm.severity) == (label, severity)
    assert group.pvdb["X:CS:PS:BGRSCRPT_01:IOCOUT"].value == "line 1\nline 2"


async def test_toggle_switches_autorestart_off_and_back_to_what_it_was():
    group, controller = group_for(SlotView(autorestart=2))  # Always
    toggle = group.pvdb["X:CS:PS:BGRSCRPT_01:TOGGLE"]
    readback = group.pvdb["X:CS:PS:BGRSCRPT_01:AUTORESTART"]
    assert readback.value == "On"
    await toggle.write("Busy")
    assert controller.calls[-1] == ("autorestart", 0)
    await group.publish(SlotView(autorestart=0))
    assert readback.value == "Off"
    await toggle.write(1)
    assert controller.calls[-1] == ("autorestart", 2)
    await group.publish(SlotView(autorestart=2))
    assert readback.value == "On"


async def test_publishing_the_slot_publishes_both(ioc):
    pvdb, groups = ioc
    group = groups["BGRSCRPT_02"]
    assert isinstance(group, SlotAndProcServ)
    await group.publish(SlotView(status=int(SlotState.RUNNING), pid=42))
    assert pvdb[f"{PREFIX}BGRSCRPT_02:PID"].value == 42
    assert pvdb[f"{PREFIX}CS:PS:BGRSCRPT_02:STATUS"].value == "Running"
    assert pvdb[f"{PREFIX}CS:PS:BGRSCRPT_02:IOCNAME"].value == "BGRSCRPT_02"
