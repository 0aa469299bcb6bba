"""The IOC-wide PVs, ``$(P)BGRSCRPT:``: HEARTBEAT, UPTIME, VERSION, MSG, LOOP_LAG."""

from __future__ import annotations

from dataclasses import dataclass

from caproto import AlarmSeverity, AlarmStatus, ChannelType, SubscriptionType
from caproto.server import pvproperty

from .. import __version__
from . import properties as props
from .channels import describe_record
from .epics_reads import BasePVGroup

MSG_LIMIT = 1024
"""Bytes of ``BGRSCRPT:MSG`` (its NELM)."""
LOOP_LAG_HIGH = 200.0
LOOP_LAG_HIHI = 1000.0
"""Default alarm limits of ``BGRSCRPT:LOOP_LAG`` (ms): MINOR at HIGH, MAJOR at HIHI."""


@dataclass
class IocView:
    """What the IOC-wide PVs show (VERSION is fixed)."""

    heartbeat: int = 0
    uptime: int = 0  # s
    loop_lag: float = 0.0  # ms
    msg: str = ""
    msg_severity: AlarmSeverity = AlarmSeverity.NO_ALARM


class IocPVs(BasePVGroup):
    """The IOC's own liveness, identity and health. All read-only."""

    heartbeat = pvproperty(
        name="HEARTBEAT",
        dtype=int,
        value=0,
        read_only=True,
        record="longin",
        doc="IOC heartbeat, +1 per second",
        alarm_group="HEARTBEAT",
    )
    uptime = pvproperty(
        name="UPTIME",
        dtype=int,
        value=0,
        read_only=True,
        record="longin",
        doc="Seconds since the IOC started",
        units="s",
        alarm_group="UPTIME",
    )
    version = pvproperty(
        name="VERSION",
        dtype=ChannelType.STRING,
        value=__version__,
        read_only=True,
        record="stringin",
        doc="bgrscrpt_ioc version",
        alarm_group="VERSION",
    )
    msg = props.text("MSG", "Problems of the IOC itself, in words", MSG_LIMIT)
    loop_lag = pvproperty(
        name="LOOP_LAG",
        dtype=float,
        value=0.0,
        read_only=True,
        record="ai",
        doc="How late the event loop runs its timers",
        units="ms",
        precision=1,
        upper_warning_limit=LOOP_LAG_HIGH,
        upper_alarm_limit=LOOP_LAG_HIHI,
        alarm_group="LOOP_LAG",
    )

    def __init__(
        self, prefix: str, *, lag_high: float = LOOP_LAG_HIGH, lag_hihi: float = LOOP_LAG_HIHI
    ):
        """``prefix`` is the whole record prefix, e.g. ``f"{P}BGRSCRPT:"``; ``lag_high`` and
        ``lag_hihi`` the LOOP_LAG alarm limits in ms (its HIGH and HIHI fields)."""
        super().__init__(prefix)
        # Before the server runs, as pvproperty's own keywords would (they are per class).
        self.loop_lag._data.update(upper_warning_limit=lag_high, upper_alarm_limit=lag_hihi)
        for channel in self.attr_pvdb.values():
            describe_record(channel)

    async def show(self, view: IocView) -> None:
        """Show ``view``: what the publisher calls. Writes only what changed."""
        await self.publish(view.heartbeat, view.uptime)
        await self.publish_lag(view.loop_lag)
        await self.publish_msg(view.msg, view.msg_severity)

    async def publish(self, heartbeat: int, uptime: int) -> None:
        """Show the IOC's heartbeat count and uptime in seconds; writes only what changed."""
        for channel, value in ((self.heartbeat, int(heartbeat)), (self.uptime, int(uptime))):
            if channel.value != value:
                await channel.write(value, verify_value=False)

    async def publish_lag(self, lag_ms: float) -> None:
        """Show the loop's lag (ms) with the alarm its HIGH/HIHI limits give it."""
        channel = self.loop_lag
        value = round(float(lag_ms), 1)
        status, severity = lag_alarm(value, channel.upper_warning_limit, channel.upper_alarm_limit)
        if (value, status, severity) == (
            channel.value,
            channel.alarm.status,
            channel.alarm.severity,
        ):
            return
        await channel.write(
            value,
            verify_value=False,
            flags=SubscriptionType.DBE_ALARM,
            status=status,
            severity=severity,
        )

    async def publish_msg(self, text: str, severity: AlarmSeverity) -> None:
        """Show the IOC's MSG; a severity other than NO_ALARM says something is wrong now."""
        channel = self.msg
        value = _fit(text, MSG_LIMIT)
        status = AlarmStatus.NO_ALARM if severity == AlarmSeverity.NO_ALARM else AlarmStatus.WRITE
        if (value, severity) == (channel.value, channel.alarm.severity):
            return
        await channel.write(
            value,
            verify_value=False,
            flags=SubscriptionType.DBE_ALARM,
            status=status,
            severity=severity,
        )


def lag_alarm(value: float, high: float, hihi: float) -> tuple[AlarmStatus, AlarmSeverity]:
    """As an ai record with HSV=MINOR, HHSV=MAJOR: at or above a limit (a limit of 0 is off)."""
    if hihi > 0 and value >= hihi:
        return AlarmStatus.HIHI, AlarmSeverity.MAJOR_ALARM
    if high > 0 and value >= high:
        return AlarmStatus.HIGH, AlarmSeverity.MINOR_ALARM
    return AlarmStatus.NO_ALARM, AlarmSeverity.NO_ALARM


def _fit(text: str, limit: int) -> str:
    """UTF-8 bytes carried as latin-1 characters, cut at a character boundary (as slot MSG)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) > limit:
        raw = raw[:limit].decode("utf-8", "ignore").encode("utf-8")
    return raw.decode("latin-1")
