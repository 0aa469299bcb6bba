"""The watch PVs (ca/watch_pvs.py): puts become controller calls; bad puts change nothing.

NAMES lists the watches, in settings order, and no put changes it.
"""

from __future__ import annotations

import pytest
from caproto import AccessRights, AlarmSeverity, AlarmStatus, ChannelType

from bgrscrpt_ioc.ca.channels import is_read_only
from bgrscrpt_ioc.ca.watch_pvs import WatchView, build_watch_pvs
from bgrscrpt_ioc.core.watch import NAMES_LIMIT, Level, WatchRefused, WatchState


class Controller:
    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.refuse: str | None = None

    def _call(self, *call: object) -> None:
        if self.refuse:
            raise WatchRefused(self.refuse)
        self.calls.append(call)

    def set_enabled(self, enabled: bool) -> None:
        self._call("enable", enabled)

    def restart_now(self) -> None:
        self._call("restart")

    def set_dry_run(self, dry_run: bool) -> None:
        self._call("dryrun", dry_run)


@pytest.fixture
def controller() -> Controller:
    return Controller()


@pytest.fixture
def pvs(controller):
    return build_watch_pvs("P:", [("ZF", controller, WatchView())], controller)


def pv(pvs, suffix: str):
    return pvs.pvdb[f"P:BGRSCRPT:WATCH:{suffix}"]


async def put(channel, value, data_type: ChannelType):
    data = [value.encode() if isinstance(value, str) else value]
    return await channel.auth_write("localhost", "ut", data, data_type, None)


async def test_restart_put_calls_the_controller_and_reads_back_off(pvs, controller):
    channel = pv(pvs, "ZF:RESTART")
    await put(channel, 1, ChannelType.ENUM)
    assert controller.calls == [("restart",)]
    assert channel.value == "Off"


async def test_a_refused_restart_rejects_the_put(pvs, controller):
    controller.refuse = "a restart is already under way"
    with pytest.raises(ValueError, match="under way"):
        await put(pv(pvs, "ZF:RESTART"), 1, ChannelType.ENUM)


@pytest.mark.parametrize(
    ("suffix", "value", "data_type"),
    [
        ("ZF:ENABLE", "Maybe", ChannelType.STRING),
        ("ZF:ENABLE", 2, ChannelType.ENUM),
        ("ZF:RESTART", 7, ChannelType.LONG),
        ("DRYRUN", "yes", ChannelType.STRING),
        ("DRYRUN", -1, ChannelType.LONG),
    ],
)
async def test_bad_puts_are_rejected_and_change_nothing(pvs, controller, suffix, value, data_type):
    channel = pv(pvs, suffix)
    before = (channel.value, channel.timestamp)
    with pytest.raises(ValueError):
        await put(channel, value, data_type)
    assert controller.calls == []
    assert (channel.value, channel.timestamp) == before
    assert (channel.alarm.status, channel.alarm.severity) == (
        AlarmStatus.NO_ALARM,
        AlarmSeverity.NO_ALARM,
    )


async def test_enable_and_dryrun_puts(pvs, controller):
    await put(pv(pvs, "ZF:ENABLE"), "Off", ChannelType.STRING)
    await put(pv(pvs, "DRYRUN"), 1, ChannelType.ENUM)
    assert controller.calls == [("enable", False), ("dryrun", True)]
    assert pv(pvs, "ZF:ENABLE").value == "Off"
    assert pv(pvs, "DRYRUN").value == "On"


@pytest.mark.parametrize("suffix", ["STATE", "ALARM", "RESTART_CNT", "LAST_RESTART", "MSG"])
async def test_read_only_pvs_refuse_every_put(pvs, suffix):
    with pytest.raises(Exception):  # noqa: B017 - caproto's Forbidden, or a conversion error
        await put(pv(pvs, f"ZF:{suffix}"), 1, ChannelType.LONG)


async def test_publish_shows_the_view_with_state_and_alarm_severities(pvs):
    group = pvs.watches["ZF"]
    view = WatchView(
        state=int(WatchState.LOCKOUT),
        alarm=int(Level.INVALID),
        enable=True,
        restart_cnt=3,
        last_restart="2026-11-26T03:00:00.000",
        msg="LOCKOUT: 3 restarts in 3600 s; put ENABLE 1 to clear",
    )
    await group.publish(view)
    state = pv(pvs, "ZF:STATE")
    assert state.value == "LOCKOUT"
    assert state.alarm.severity == AlarmSeverity.MAJOR_ALARM
    assert pv(pvs, "ZF:ALARM").value == "INVALID"
    assert pv(pvs, "ZF:RESTART_CNT").value == 3
    assert pv(pvs, "ZF:LAST_RESTART").value == "2026-11-26T03:00:00.000"
    assert pv(pvs, "ZF:MSG").value.startswith("LOCKOUT: 3 restarts")
    await group.publish(WatchView(state=int(WatchState.OK)))
    assert state.value == "OK"
    assert state.alarm.severity == AlarmSeverity.NO_ALARM


# ---- NAMES: which watches the IOC has ----------------------------------------------


def names_of(pvs) -> str:
    return pv(pvs, "NAMES").value


def test_names_lists_every_watch_in_order(controller):
    watches = [(name, controller, WatchView()) for name in ("ZFMAGFLD", "TEMP_1", "flaky-2")]
    pvs = build_watch_pvs("P:", watches, controller)
    assert names_of(pvs) == "ZFMAGFLD TEMP_1 flaky-2"
    channel = pv(pvs, "NAMES")
    assert channel.data_type == ChannelType.CHAR
    assert channel.record_type == "waveform"


def test_names_is_empty_and_dryrun_served_without_watches(controller):
    pvs = build_watch_pvs("P:", [], controller)
    assert names_of(pvs) == ""
    assert set(pvs.pvdb) == {"P:BGRSCRPT:WATCH:DRYRUN", "P:BGRSCRPT:WATCH:NAMES"}
    assert pvs.watches == {}


@pytest.mark.parametrize(
    ("value", "data_type"),
    [("X Y", ChannelType.STRING), (65, ChannelType.CHAR), (1, ChannelType.LONG)],
)
async def test_names_refuses_every_put(pvs, value, data_type):
    channel = pv(pvs, "NAMES")
    assert is_read_only(channel)
    assert AccessRights.WRITE not in channel.check_access("localhost", "anyone")
    with pytest.raises(Exception):  # noqa: B017 - caproto's Forbidden, or a conversion error
        await put(channel, value, data_type)
    assert channel.value == "ZF"


def test_names_that_do_not_fit_are_refused(controller):
    many = [(f"W{i:039d}", controller, WatchView()) for i in range(NAMES_LIMIT // 41 + 1)]
    with pytest.raises(ValueError, match="NAMES holds"):
        build_watch_pvs("P:", many, controller)
