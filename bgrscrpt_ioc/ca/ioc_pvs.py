"""The IOC-wide PVs, ``$(P)BGRSCRPT:`` (SPEC.md): HEARTBEAT, UPTIME, VERSION."""

from __future__ import annotations

from caproto import ChannelType
from caproto.server import pvproperty

from .. import __version__
from .channels import describe_record
from .epics_reads import BasePVGroup


class IocPVs(BasePVGroup):
    """The IOC's own liveness and identity. All read-only."""

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

    def __init__(self, prefix: str):
        """``prefix`` is the whole record prefix, e.g. ``f"{P}BGRSCRPT:"``."""
        super().__init__(prefix)
        for channel in self.attr_pvdb.values():
            describe_record(channel)

    async def publish(self, heartbeat: int, uptime: int) -> None:
        """Show the IOC's heartbeat count and uptime in seconds; writes only what changed."""
        for channel, value in ((self.heartbeat, int(heartbeat)), (self.uptime, int(uptime))):
            if channel.value != value:
                await channel.write(value, verify_value=False)
