"""The kinds of PV the slot and watch groups are made of, as pvproperty factories.

Every PV gets its own ``alarm_group`` (its name): caproto otherwise gives a whole
PVGroup one alarm, and a MAJOR on STATUS would show on every PV of the slot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from caproto import AlarmSeverity, AlarmStatus, ChannelType
from caproto.server import pvproperty

from .channels import CheckedEnum

OFF_ON = ("Off", "On")


def switch(name: str, doc: str, value: str = "Off") -> pvproperty:
    """A bo Off/On that may be written: a command (START) or a setting (ENABLE)."""
    return pvproperty(
        name=name,
        dtype=CheckedEnum,
        enum_strings=OFF_ON,
        value=value,
        record="bo",
        doc=doc,
        alarm_group=name,
    )


def state(name: str, labels: tuple[str, ...], doc: str, record: str = "mbbi") -> pvproperty:
    """A read-only enum showing a state, its first label to begin with."""
    return pvproperty(
        name=name,
        dtype=ChannelType.ENUM,
        enum_strings=labels,
        value=labels[0],
        read_only=True,
        record=record,
        doc=doc,
        alarm_group=name,
    )


def counter(name: str, doc: str, **kwargs: Any) -> pvproperty:
    """A read-only longin."""
    return pvproperty(
        name=name,
        dtype=int,
        value=0,
        read_only=True,
        record="longin",
        doc=doc,
        alarm_group=name,
        **kwargs,
    )


def measure(name: str, doc: str, units: str, precision: int = 1) -> pvproperty:
    """A read-only ai: a measured quantity with its units."""
    return pvproperty(
        name=name,
        dtype=float,
        value=0.0,
        read_only=True,
        record="ai",
        doc=doc,
        alarm_group=name,
        units=units,
        precision=precision,
    )


def text(name: str, doc: str, max_length: int) -> pvproperty:
    """A read-only char waveform of ``max_length`` bytes."""
    return pvproperty(
        name=name,
        dtype=str,
        value="",
        max_length=max_length,
        read_only=True,
        record="waveform",
        doc=doc,
        alarm_group=name,
    )


def state_alarm(
    severities: Mapping[Any, AlarmSeverity], key: Any
) -> tuple[AlarmStatus, AlarmSeverity]:
    """The (status, severity) a state PV carries: STATE alarm at the state's severity."""
    severity = severities.get(key, AlarmSeverity.NO_ALARM)
    status = AlarmStatus.NO_ALARM if severity == AlarmSeverity.NO_ALARM else AlarmStatus.STATE
    return status, severity
