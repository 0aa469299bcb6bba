"""The Channel Access adapter: PVGroups driven through caproto's own server-side objects.

Puts go through ``auth_write`` (what caproto's server calls for a client's put,
with the wire data type), so conversion, access and validation are the real
ones. One test at the end runs a real caproto server and a libca client.
"""

from __future__ import annotations

import ipaddress
import logging
import math
import socket
import uuid

import pytest
from caproto import AccessRights, AlarmSeverity, AlarmStatus, ChannelType
from caproto._data import CannotExceedLimits, Forbidden

from bgrscrpt_ioc import __version__
from bgrscrpt_ioc.ca.access import WriteRule, apply_access
from bgrscrpt_ioc.ca.channels import PutRejected, quiet_rejected_puts
from bgrscrpt_ioc.ca.ioc_pvs import IocPVs
from bgrscrpt_ioc.ca.pvdb import build_pvdb, pv_names
from bgrscrpt_ioc.ca.slot_pvs import SlotPVs, SlotView, char_waveform_text
from bgrscrpt_ioc.core.slot import SlotState
from tests.unit.ca_server import run_client, serving

P = "UT:"
SLOT = "BGRSCRPT_01"


class FakeController:
    """Records calls; ``refuse[name] = "why"`` makes that call raise ValueError."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.refuse: dict[str, str] = {}

    def _call(self, name: str, *args: object) -> None:
        if name in self.refuse:
            raise ValueError(self.refuse[name])
        self.calls.append((name, *args))

    def start(self) -> None:
        self._call("start")

    def stop(self) -> None:
        self._call("stop")

    def restart(self) -> None:
        self._call("restart")

    def set_autorestart(self, mode: int) -> None:
        self._call("set_autorestart", mode)

    def set_watchdog(self, seconds: float) -> None:
        self._call("set_watchdog", seconds)


@pytest.fixture
def controller() -> FakeController:
    return FakeController()


@pytest.fixture
def slot(controller: FakeController) -> SlotPVs:
    return SlotPVs(f"{P}{SLOT}:", controller, SlotView())


def pv(group: SlotPVs | IocPVs, suffix: str):
    return group.pvdb[f"{group.prefix}{suffix}"]


async def put(channel, value, data_type: ChannelType, host: str = "localhost", user: str = "ut"):
    """A client's put, as caproto's server hands it over."""
    data = [value.encode() if isinstance(value, str) else value]
    return await channel.auth_write(host, user, data, data_type, None)


def alarm_of(channel) -> tuple[AlarmStatus, AlarmSeverity]:
    return channel.alarm.status, channel.alarm.severity


# ---- commands ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["START", "STOP", "RESTART"])
async def test_command_put_1_calls_the_controller_and_reads_back_off(slot, controller, name):
    channel = pv(slot, name)
    await put(channel, 1, ChannelType.ENUM)
    assert controller.calls == [(name.lower(),)]
    assert channel.value == "Off"


async def test_command_put_on_as_a_string(slot, controller):
    await put(pv(slot, "START"), "On", ChannelType.STRING)
    assert controller.calls == [("start",)]
    assert pv(slot, "START").value == "Off"


@pytest.mark.parametrize("value, data_type", [(0, ChannelType.ENUM), ("Off", ChannelType.STRING)])
async def test_command_put_off_does_nothing(slot, controller, value, data_type):
    await put(pv(slot, "STOP"), value, data_type)
    assert controller.calls == []
    assert pv(slot, "STOP").value == "Off"


@pytest.mark.parametrize(
    "value, data_type",
    [
        ("banana", ChannelType.STRING),
        (2, ChannelType.ENUM),
        (7, ChannelType.LONG),
        (2.0, ChannelType.DOUBLE),
    ],
)
async def test_command_put_of_a_wrong_value_is_rejected_and_changes_nothing(
    slot, controller, value, data_type
):
    channel = pv(slot, "START")
    before = channel.timestamp
    with pytest.raises(ValueError):
        await put(channel, value, data_type)
    assert controller.calls == []
    assert channel.value == "Off"
    assert channel.timestamp == before
    assert alarm_of(channel) == (AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)


async def test_in_process_enum_write_cannot_index_from_the_end(slot, controller):
    # Python would read labels[-1]; an enum index is never negative.
    with pytest.raises(PutRejected):
        await pv(slot, "START").write(-1)
    assert controller.calls == []


async def test_controller_refusing_a_command_rejects_the_put(slot, controller):
    controller.refuse["start"] = "no script at /x/background_script.py"
    channel = pv(slot, "START")
    with pytest.raises(ValueError, match="no script"):
        await put(channel, 1, ChannelType.ENUM)
    assert channel.value == "Off"
    assert alarm_of(channel) == (AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)


# ---- settings ----------------------------------------------------------------


@pytest.mark.parametrize(
    "value, data_type, mode, label",
    [(0, ChannelType.ENUM, 0, "Off"), ("Always", ChannelType.STRING, 2, "Always")],
)
async def test_autorestart_put_calls_the_controller_with_the_index(
    slot, controller, value, data_type, mode, label
):
    await put(pv(slot, "AUTORESTART"), value, data_type)
    assert controller.calls == [("set_autorestart", mode)]
    assert pv(slot, "AUTORESTART").value == label


@pytest.mark.parametrize(
    "value, data_type",
    [(3, ChannelType.ENUM), (65535, ChannelType.ENUM), ("Sometimes", ChannelType.STRING)],
)
async def test_autorestart_out_of_range_is_rejected_and_unchanged(
    slot, controller, value, data_type
):
    channel = pv(slot, "AUTORESTART")
    with pytest.raises(PutRejected):
        await put(channel, value, data_type)
    assert controller.calls == []
    assert channel.value == "On failure"
    assert alarm_of(channel) == (AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)


async def test_autorestart_refused_by_the_controller_is_unchanged(slot, controller):
    controller.refuse["set_autorestart"] = "not now"
    with pytest.raises(ValueError, match="not now"):
        await put(pv(slot, "AUTORESTART"), 2, ChannelType.ENUM)
    assert pv(slot, "AUTORESTART").value == "On failure"


@pytest.mark.parametrize(
    "value, data_type",
    [(12.5, ChannelType.DOUBLE), ("0.5", ChannelType.STRING), (30, ChannelType.LONG)],
)
async def test_watchdog_put_sets_seconds(slot, controller, value, data_type):
    await put(pv(slot, "WATCHDOG"), value, data_type)
    assert controller.calls == [("set_watchdog", float(value))]
    assert pv(slot, "WATCHDOG").value == float(value)


@pytest.mark.parametrize(
    "value, data_type",
    [
        (-1.0, ChannelType.DOUBLE),
        (math.nan, ChannelType.DOUBLE),
        (math.inf, ChannelType.DOUBLE),
        (86400.5, ChannelType.DOUBLE),
        ("banana", ChannelType.STRING),
        ("-3", ChannelType.STRING),
    ],
)
async def test_watchdog_bad_value_is_rejected_and_unchanged(slot, controller, value, data_type):
    channel = pv(slot, "WATCHDOG")
    with pytest.raises((PutRejected, CannotExceedLimits)):
        await put(channel, value, data_type)
    assert controller.calls == []
    assert channel.value == 0.0
    assert alarm_of(channel) == (AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)


async def test_watchdog_refused_by_the_controller_is_unchanged(slot, controller):
    controller.refuse["set_watchdog"] = "watchdog must be >= 0 seconds"
    channel = pv(slot, "WATCHDOG")
    with pytest.raises(ValueError, match=">= 0"):
        await put(channel, 5.0, ChannelType.DOUBLE)
    assert channel.value == 0.0
    assert alarm_of(channel) == (AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)


async def test_watchdog_metadata(slot):
    channel = pv(slot, "WATCHDOG")
    assert (channel.units, channel.precision) == ("s", 1)
    assert (channel.lower_ctrl_limit, channel.upper_ctrl_limit) == (0.0, 86400.0)


# ---- read-only ----------------------------------------------------------------

READ_ONLY = [
    "STATUS", "HEARTBEAT", "PID", "START_CNT", "EXIT_CODE", "UPTIME", "REGISTERED",
    "SCRIPT", "MSG", "LOG", "PLOT_URL",
]  # fmt: skip


@pytest.mark.parametrize("name", READ_ONLY)
async def test_read_only_pvs_refuse_every_put(slot, name):
    channel = pv(slot, name)
    assert channel.check_access("localhost", "ut") == AccessRights.READ
    with pytest.raises(Forbidden):
        await put(channel, "1", ChannelType.STRING)


@pytest.mark.parametrize("field", ["DESC", "ZNAM", "PROC", "RVAL", "SCAN", "ASG"])
async def test_record_fields_are_read_only(slot, controller, field):
    channel = pv(slot, "START").fields[field]
    assert channel.check_access("localhost", "ut") == AccessRights.READ
    with pytest.raises(Forbidden):
        await put(channel, 1, ChannelType.LONG)
    assert controller.calls == []


async def test_reading_a_field_never_writes_the_record(slot, controller):
    channel = pv(slot, "AUTORESTART")
    before = channel.timestamp
    for name in ("ZRST", "ONST", "TWST", "DESC", "RVAL"):
        field = channel.fields[name]
        await field.read(field.data_type)
    assert controller.calls == []
    assert channel.timestamp == before


def test_the_group_keeps_its_logger(slot):
    assert isinstance(slot.log, logging.Logger)


# ---- publish -------------------------------------------------------------------


def spy_writes(group: SlotPVs) -> list[str]:
    """Names of the PVs written from now on."""
    written: list[str] = []
    for channel in group.pvdb.values():

        def make(original, name=channel.pvspec.name):
            async def write(*args, **kwargs):
                written.append(name)
                return await original(*args, **kwargs)

            return write

        channel.write = make(channel.write)
    return written


async def test_publish_writes_only_what_changed(slot, controller):
    written = spy_writes(slot)
    await slot.publish(SlotView())
    assert written == []
    await slot.publish(
        SlotView(status=SlotState.RUNNING, pid=4242, uptime=1, msg="running, pid 4242")
    )
    assert sorted(written) == ["MSG", "PID", "STATUS", "UPTIME"]
    written.clear()
    await slot.publish(
        SlotView(status=SlotState.RUNNING, pid=4242, uptime=2, msg="running, pid 4242")
    )
    assert written == ["UPTIME"]
    assert pv(slot, "STATUS").value == "RUNNING"
    assert pv(slot, "PID").value == 4242
    assert pv(slot, "MSG").value == "running, pid 4242"
    assert controller.calls == []


async def test_publish_of_settings_does_not_call_the_controller(slot, controller):
    await slot.publish(SlotView(autorestart=2, watchdog=30.0, registered=True))
    assert controller.calls == []
    assert pv(slot, "AUTORESTART").value == "Always"
    assert pv(slot, "WATCHDOG").value == 30.0
    assert pv(slot, "REGISTERED").value == "Yes"


async def test_an_accepted_put_counts_as_shown(slot, controller):
    written = spy_writes(slot)
    await put(pv(slot, "WATCHDOG"), 5.0, ChannelType.DOUBLE)
    written.clear()
    await slot.publish(SlotView(watchdog=5.0))
    assert written == []


async def test_publish_restores_a_setting_the_controller_did_not_keep(slot, controller):
    await put(pv(slot, "AUTORESTART"), 2, ChannelType.ENUM)
    await slot.publish(SlotView(autorestart=1))
    assert pv(slot, "AUTORESTART").value == "On failure"


async def test_publish_rejects_an_unknown_state(slot):
    with pytest.raises(ValueError):
        await slot.publish(SlotView(status=7))


@pytest.mark.parametrize(
    "state, status, severity",
    [
        (SlotState.FATAL, AlarmStatus.STATE, AlarmSeverity.MAJOR_ALARM),
        (SlotState.BACKOFF, AlarmStatus.STATE, AlarmSeverity.MINOR_ALARM),
        (SlotState.RUNNING, AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM),
        (SlotState.EXITED, AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM),
    ],
)
async def test_status_severity(slot, state, status, severity):
    channel = pv(slot, "STATUS")
    await slot.publish(SlotView(status=state))
    assert channel.value == state.name
    assert alarm_of(channel) == (status, severity)
    sevr = channel.fields["SEVR"]
    await sevr.read(sevr.data_type)
    assert sevr.value == sevr.enum_strings[severity]


async def test_status_alarm_clears_and_stays_on_its_own_pv(slot):
    await slot.publish(SlotView(status=SlotState.FATAL))
    assert alarm_of(pv(slot, "MSG")) == (AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)
    await slot.publish(SlotView(status=SlotState.STOPPED))
    assert alarm_of(pv(slot, "STATUS")) == (AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM)


async def test_status_alarm_reaches_alarm_only_subscribers(slot):
    from caproto import SubscriptionType

    flags: list[int] = []
    channel = pv(slot, "STATUS")
    original = channel.publish

    async def publish(f):
        flags.append(f)
        return await original(f)

    channel.publish = publish
    await slot.publish(SlotView(status=SlotState.FATAL))
    assert any(f & SubscriptionType.DBE_ALARM for f in flags)


def test_the_initial_view_is_shown_before_the_server_runs(controller):
    view = SlotView(status=SlotState.FATAL, start_cnt=5, msg="FATAL: 5 starts", script="/c/bs.py")
    group = SlotPVs(f"{P}{SLOT}:", controller, view)
    status = pv(group, "STATUS")
    assert status.value == "FATAL"
    assert alarm_of(status) == (AlarmStatus.STATE, AlarmSeverity.MAJOR_ALARM)
    assert status.fields["SEVR"].value == "MAJOR"
    assert pv(group, "START_CNT").value == 5
    assert pv(group, "SCRIPT").value == "/c/bs.py"
    assert pv(group, "AUTORESTART").value == "On failure"


async def test_log_truncation_keeps_the_end(slot):
    lines = [f"line {i:05d}" for i in range(2000)]
    await slot.publish(SlotView(log="\n".join(lines)))
    value = pv(slot, "LOG").value
    assert len(value) == 5120
    assert value.endswith("line 01999")


async def test_msg_truncation_keeps_the_start(slot):
    await slot.publish(SlotView(msg="exited with code 1: " + "x" * 3000))
    value = pv(slot, "MSG").value
    assert len(value) == 1024
    assert value.startswith("exited with code 1: ")


def test_char_waveform_text_is_utf8_and_never_splits_a_character():
    assert char_waveform_text("é" * 3, 5).encode("latin-1").decode("utf-8") == "éé"
    assert char_waveform_text("aé", 2, keep_end=True).encode("latin-1").decode("utf-8") == "é"
    assert char_waveform_text("plain", 100) == "plain"


# ---- IOC-wide ----------------------------------------------------------------


async def test_ioc_pvs():
    ioc = IocPVs(f"{P}BGRSCRPT:")
    assert pv(ioc, "VERSION").value == __version__
    assert pv(ioc, "UPTIME").units == "s"
    await ioc.publish(3, 7)
    assert (pv(ioc, "HEARTBEAT").value, pv(ioc, "UPTIME").value) == (3, 7)
    for name in ("HEARTBEAT", "UPTIME", "VERSION"):
        assert pv(ioc, name).check_access("localhost", "ut") == AccessRights.READ


def test_build_pvdb_and_pv_names():
    slots = [(name, FakeController(), SlotView()) for name in ("BGRSCRPT_01", "BGRSCRPT_02")]
    pvdb, ioc, groups = build_pvdb(P, slots)
    assert set(groups) == {"BGRSCRPT_01", "BGRSCRPT_02"}
    assert f"{P}BGRSCRPT:HEARTBEAT" in pvdb and f"{P}BGRSCRPT_02:LOG" in pvdb
    assert len(pvdb) == 5 + 2 * 20
    # The IOC always adds the IOC-wide watch PVs, with or without a [[watch]].
    watch_pvs = [f"{P}BGRSCRPT:WATCH:DRYRUN", f"{P}BGRSCRPT:WATCH:NAMES"]
    assert pv_names(P, ["BGRSCRPT_01", "BGRSCRPT_02"]) == list(pvdb) + watch_pvs


# ---- access rules --------------------------------------------------------------


def access(channel, host, user) -> AccessRights:
    return channel.check_access(host, user)


def test_no_lists_leaves_access_alone(slot):
    apply_access(slot.pvdb, write_hosts=None, write_users=None)
    assert access(pv(slot, "START"), "anywhere", "anyone") == AccessRights.READ | AccessRights.WRITE


async def test_write_hosts(slot, controller):
    apply_access(slot.pvdb, write_hosts=["ndxdemo", "10.1.2.3"], write_users=None)
    start = pv(slot, "START")
    rw = AccessRights.READ | AccessRights.WRITE
    assert access(start, "NDXDEMO", "x") == rw
    assert access(start, "ndxdemo.isis.cclrc.ac.uk", "x") == rw
    assert access(start, "10.1.2.3", "x") == rw
    assert access(start, "10.1.2.4", "x") == AccessRights.READ
    assert access(start, "elsewhere", "x") == AccessRights.READ
    assert access(start, None, "x") == AccessRights.READ
    assert access(pv(slot, "STATUS"), "ndxdemo", "x") == AccessRights.READ
    assert access(start.fields["DESC"], "ndxdemo", "x") == AccessRights.READ
    with pytest.raises(Forbidden):
        await put(start, 1, ChannelType.ENUM, host="elsewhere")
    assert controller.calls == []
    await put(start, 1, ChannelType.ENUM, host="ndxdemo")
    assert controller.calls == [("start",)]


def test_localhost_means_this_machine():
    rule = WriteRule(["localhost"], None)
    for host in ("localhost", "127.0.0.1", "::1", socket.gethostname(), "LOCALHOST"):
        assert rule.allows(host, "x"), host
    assert not rule.allows("some-other-host", "x")
    assert WriteRule(["127.0.0.1"], None).allows("localhost", "x")


def test_address_entries_match_the_peer_address_not_a_reported_name():
    rule = WriteRule(["10.1.2.3", "192.168.7.0/24", "ndxdemo"], None)
    assert rule.allows("anything", "x", address="10.1.2.3")
    assert rule.allows("anything", "x", address="192.168.7.200")
    assert rule.allows("anything", "x", address="::ffff:192.168.7.1")  # v4 on a v6 socket
    # A client elsewhere that reports an allowed address or network as its name: refused.
    assert not rule.allows("10.1.2.3", "x", address="10.9.9.9")
    assert not rule.allows("192.168.7.1", "x", address="10.9.9.9")
    # Names keep their meaning: the name the client reports.
    assert rule.allows("ndxdemo", "x", address="10.9.9.9")


def test_localhost_matches_only_a_peer_on_this_machine():
    rule = WriteRule(["localhost"], None)
    assert rule.allows("localhost", "x", address="127.0.0.1")
    assert rule.allows("any-name", "x", address="127.0.0.2")
    assert rule.allows("any-name", "x", address="::1")
    # A remote client that claims to be localhost, or this machine: refused.
    assert not rule.allows("localhost", "x", address="10.9.9.9")
    assert not rule.allows(socket.gethostname(), "x", address="10.9.9.9")


def test_require_address_matches_names_by_their_addresses_at_start_up():
    looked_up: list[str] = []

    def resolver(name: str) -> list:
        looked_up.append(name)
        return [ipaddress.ip_network("10.1.2.3")] if name == "ops" else []

    rule = WriteRule(["ops", "gone"], None, require_address=True, resolver=resolver)
    assert sorted(looked_up) == ["gone", "ops"]  # once, when the rule is made
    assert rule.allows("whatever", "x", address="10.1.2.3")
    assert not rule.allows("ops", "x", address="10.9.9.9")  # claims the name: not enough
    assert not rule.allows("ops", "x", address=None)  # no address: nothing to check
    assert len(looked_up) == 2  # not looked up again for each client


def test_write_users_and_both_lists(slot):
    apply_access(slot.pvdb, write_hosts=None, write_users=["spudulike"])
    watchdog = pv(slot, "WATCHDOG")
    rw = AccessRights.READ | AccessRights.WRITE
    assert access(watchdog, "anyhost", "SPUDULIKE") == rw
    assert access(watchdog, "anyhost", "other") == AccessRights.READ
    both = WriteRule(["ndxdemo"], ["spudulike"])
    assert both.allows("ndxdemo", "spudulike")
    assert not both.allows("ndxdemo", "other")
    assert not both.allows("elsewhere", "spudulike")


# ---- the log of a refused put ----------------------------------------------------


def _log_refusal(exc: BaseException) -> logging.LogRecord:
    quiet_rejected_puts()
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("caproto.circ")
    handler = Keep()
    logger.addHandler(handler)
    try:
        try:
            raise exc
        except BaseException:
            logger.exception("Invalid write request by %s (%s): %r", "ut", "host", "cmd")
    finally:
        logger.removeHandler(handler)
    return records[0]


def test_a_refused_put_logs_one_line():
    record = _log_refusal(PutRejected("watchdog must be 0 (off) to 86400 s"))
    assert record.exc_info is None
    assert "\n" not in record.getMessage()
    assert "86400" in record.getMessage()


def test_a_bug_in_a_putter_keeps_its_traceback():
    assert _log_refusal(AttributeError("oops")).exc_info is not None


# ---- one real server, one libca client -------------------------------------------

CLIENT = r"""
import json, sys, time
from epics import ca, dbr

prefix = sys.argv[1]
out = {}
chids = {n: ca.create_channel(prefix + n, connect=False, auto_cb=False)
         for n in ("WATCHDOG", "START", "SCRIPT", "STATUS")}
for n, chid in chids.items():
    if not ca.connect_channel(chid, timeout=10):
        print(json.dumps({"error": "no connection to " + n})); sys.exit(1)

def put_status(chid, ftype, value):
    # ca_array_put_callback reports the server's verdict; pyepics' caput hides it.
    done = []
    cb = dbr.make_callback(lambda args: done.append(args.status), dbr.event_handler_args)
    data = (1 * dbr.Map[ftype])()
    if ftype == dbr.STRING:
        data[0].value = value.encode()
    else:
        data[0] = value
    ret = ca.libca.ca_array_put_callback(ftype, 1, chid, data, cb, None)
    deadline = time.monotonic() + 10
    while not done and time.monotonic() < deadline:
        ca.poll(evt=0.01)
    return {"ret": ret, "status": done[0] if done else None,
            "message": ca.message(done[0]) if done else None}

wd = chids["WATCHDOG"]
out["banana"] = put_status(wd, dbr.STRING, "banana")
out["after_banana"] = ca.get(wd)
out["negative"] = put_status(wd, dbr.DOUBLE, -5.0)
out["good"] = put_status(wd, dbr.DOUBLE, 5.0)
out["after_good"] = ca.get(wd)
ca.put(chids["START"], 1, wait=True)
out["start_reads"] = ca.get(chids["START"], ftype=dbr.STRING)
out["script_writable"] = bool(ca.write_access(chids["SCRIPT"]))
out["status"] = ca.get(chids["STATUS"], ftype=dbr.STRING)
print(json.dumps(out))
"""


async def test_real_server_refuses_a_wrong_typed_put_and_stays_up(monkeypatch, caplog):
    prefix = f"UT{uuid.uuid4().hex[:8]}:"
    controller = FakeController()
    pvdb, _, _ = build_pvdb(prefix, [(SLOT, controller, SlotView(status=SlotState.BACKOFF))])
    caplog.set_level(logging.WARNING)

    async with serving(pvdb, monkeypatch) as (ca_env, server):
        result = await run_client(CLIENT, f"{prefix}{SLOT}:", env=ca_env)
        assert not server.done()  # the IOC is still up

    ECA_NORMAL = 1
    assert result["banana"]["ret"] == ECA_NORMAL  # libca sent it ...
    assert result["banana"]["status"] not in (None, ECA_NORMAL), result  # ... the IOC refused it
    assert result["negative"]["status"] not in (None, ECA_NORMAL), result
    assert result["after_banana"] == 0.0
    assert result["good"]["status"] == ECA_NORMAL
    assert result["after_good"] == 5.0
    assert result["start_reads"] == "Off"
    assert result["script_writable"] is False
    assert result["status"] == "BACKOFF"
    assert controller.calls == [("set_watchdog", 5.0), ("start",)]
    # One line for the client's first refused put; the second, within the minute, is held back.
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 1 and "WATCHDOG refused" in lines[0].getMessage(), lines
    assert all(r.exc_info is None and "\n" not in r.getMessage() for r in lines)
