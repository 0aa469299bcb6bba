"""caproto building blocks shared by the PVGroups of this package.

caproto 1.3 needs a little help to behave like an EPICS record:

* A put that fails inside ``verify_value`` (where putters run) sets the PV's
  alarm to WRITE/MAJOR. A rejected put must change nothing, so the writable
  data classes here validate and run the putter *before* caproto's ``write``.
* ``ChannelEnum`` lets an out-of-range index through; :class:`CheckedEnum`
  does not.
* Record fields (``.DESC``, ``.ZNAM``, ``.PROC`` …) are writable over CA and some
  of them write through to the record. Here they are read-only: the contract is
  the template, not whatever a client last wrote.
* ``.EGU``, ``.ASG``, ``.FTVL``, ``.PREC``, limits and state severities are not
  filled in from the channel's own metadata, and some fields keep caproto's
  defaults where EPICS base has others (``.UDF`` 1, ``.HHSV`` MAJOR ...);
  :func:`describe_record` fills them in as base has them.
* Reads as other DBR types than the native one, and their metadata, follow
  EPICS base: the classes here mix in :class:`~.epics_reads.BaseReads`.
* A rejected put makes caproto log a full traceback; :func:`quiet_rejected_puts`
  turns that into one line.
"""

from __future__ import annotations

import logging
import numbers
import re
from collections.abc import Iterable, Mapping
from typing import Any

from caproto import (
    AccessRights,
    AlarmSeverity,
    AlarmStatus,
    ChannelData,
    ChannelDouble,
    ChannelType,
)
from caproto._data import Forbidden, SkipWrite
from caproto._utils import CaprotoConversionError
from caproto.server import PvpropertyData, PvpropertyEnum

from .answer_on_accept import accepted
from .epics_reads import BaseReads, keep_nord

READONLY_ASG = "READONLY"
"""The ``ASG`` of a record clients may not write (IBEX's access security group name)."""


class PutRejected(ValueError):
    """A put the IOC refuses. The client gets ECA_PUTFAIL; nothing changes."""


class _VerifyBeforeWrite:
    """Run verification and the putter before caproto's ``write``.

    ``ChannelData.write`` runs them inside a ``try`` whose ``except`` writes a
    WRITE/MAJOR alarm; a rejected put must leave value *and* alarm alone. Once
    they have passed, the put is accepted: the client's reply may go out before
    caproto stores the value (:mod:`~bgrscrpt_ioc.ca.answer_on_accept`).

    A putter's controller (a slot runner, a watch) refuses a put by raising
    ValueError, its text saying why: that reaches the client as PutRejected, the
    server's sign of a refusal rather than a bug.
    """

    async def write(self, value: Any, *, verify_value: bool = True, **kwargs: Any) -> None:
        if verify_value:
            value = self.preprocess_value(value)  # type: ignore[attr-defined]
            try:
                checked = await self.verify_value(value)  # type: ignore[attr-defined]
            except SkipWrite:
                return
            except PutRejected:
                raise
            except ValueError as exc:
                raise PutRejected(str(exc)) from None
            if checked is SkipWrite:
                return
            if checked is not None:
                value = checked
            accepted(self)  # caproto's write below stores it, waiting for nothing
        await super().write(value, verify_value=False, **kwargs)  # type: ignore[misc]

    async def write_from_dbr(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().write_from_dbr(*args, **kwargs)  # type: ignore[misc]
        except CaprotoConversionError as ex:
            # caproto's message is empty; the reason is in __cause__. The client sees this.
            raise PutRejected(f"not a valid value: {ex.__cause__ or ex}") from None


def enum_label(labels: tuple[str, ...], value: Any) -> str:
    """The label ``value`` names: a label itself, or its index. Raises PutRejected."""
    if isinstance(value, str):
        if value in labels:
            return value
        raise PutRejected(f"{value!r} is not one of {', '.join(labels)}")
    if isinstance(value, numbers.Integral):  # includes numpy integers
        if 0 <= int(value) < len(labels):
            return labels[int(value)]
        raise PutRejected(f"index {int(value)} is out of range 0..{len(labels) - 1}")
    raise PutRejected(f"cannot put {type(value).__name__} to an enum")


class CheckedEnum(_VerifyBeforeWrite, BaseReads, PvpropertyEnum):
    """A writable ENUM that rejects unknown strings and out-of-range indices.

    The putter receives the label (a ``str``), never an index.
    """

    async def verify_value(self, value: Any) -> Any:
        return await super().verify_value(enum_label(tuple(self.enum_strings), value))

    async def write_from_dbr(self, data: Any, data_type: Any, metadata: Any, **kwargs: Any) -> Any:
        # As an EPICS record: a string that is no state name but a whole number
        # is a state index ("1" puts On); caproto knows only the names.
        if data_type == ChannelType.STRING and len(data) == 1:
            text = _text_of(data[0])
            labels = tuple(self.enum_strings)
            if text not in labels and re.fullmatch(r"\s*[0-9]+\s*", text):
                data = [enum_label(labels, int(text)).encode(self.string_encoding or "latin-1")]
        elif data_type == ChannelType.ENUM and metadata is None and len(data) == 1:
            # A state index (what every client sends to an ENUM): its label is what
            # caproto's conversion would make of it. One out of range goes the long
            # way, for caproto's refusal.
            labels = tuple(self.enum_strings)
            index = int(data[0])
            if 0 <= index < len(labels):
                return await self.write(labels[index], **kwargs)
        return await super().write_from_dbr(data, data_type, metadata, **kwargs)


def _outside(value: float, low: float, high: float) -> bool:
    """caproto's test of one pair of alarm limits: set (low != high) and reached."""
    return low != high and (value <= low or high <= value)


class _QuickAlarmLimits(ChannelDouble):
    """caproto's DOUBLE, checking its limits in a few comparisons when none is reached.

    caproto looks up each alarm limit and its severity (through the record's
    fields) on every put, even when no limit is set or reached: a fifth of a
    put's Python work. When the value is within the control limits and reaches
    no alarm limit, the outcome is known (no alarm) and is set here; otherwise
    caproto's own check runs, with its severities and its error.
    """

    async def verify_value(self, data: Any) -> Any:
        if not isinstance(data, Iterable):
            value = data
        elif len(data) == 1:  # type: ignore[arg-type]  # as caproto: an array has a length
            (value,) = data
        else:
            return await super().verify_value(data)
        low, high = self.lower_ctrl_limit, self.upper_ctrl_limit
        if (
            (low == high or low <= value <= high)
            and not _outside(value, self.lower_alarm_limit, self.upper_alarm_limit)
            and not _outside(value, self.lower_warning_limit, self.upper_warning_limit)
        ):
            self.status = AlarmStatus.NO_ALARM
            self.severity = AlarmSeverity.NO_ALARM
            return data
        return await super().verify_value(data)


class CheckedDouble(_VerifyBeforeWrite, BaseReads, PvpropertyData, _QuickAlarmLimits):
    """A writable DOUBLE whose control limits reject (not clamp) a put outside them.

    An empty string is refused too (caproto would read it as 0).
    """

    async def write_from_dbr(self, data: Any, data_type: Any, metadata: Any, **kwargs: Any) -> Any:
        if data_type == ChannelType.STRING and any(not _text_of(v).strip() for v in data):
            raise PutRejected("an empty string is not a number")
        if data_type == ChannelType.DOUBLE and metadata is None and len(data) == 1:
            # A DOUBLE put of one value (what every client sends to a DOUBLE): the
            # value is the array's one element, which caproto's conversion would
            # copy into an array of the same type first.
            return await self.write(data, **kwargs)
        return await super().write_from_dbr(data, data_type, metadata, **kwargs)


def _text_of(value: Any) -> str:
    """A DBR_STRING element as text."""
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _read_only(hostname: str, username: str) -> AccessRights:
    return AccessRights.READ


async def _keep_value(instance: ChannelData, value: Any) -> Any:
    return value


def is_read_only(channel: ChannelData) -> bool:
    """True when no client may ever write the channel.

    Asks the channel's class, so host/user rules added per instance do not count.
    """
    return AccessRights.WRITE not in type(channel).check_access(channel, "", "")


def _preset(channel: ChannelData, value: Any) -> None:
    # Used before the server runs, when nothing can subscribe yet: the same as
    # passing value= at construction, which a class-level pvproperty cannot do.
    channel._data["value"] = value


def preset_value(channel: ChannelData, value: Any) -> None:
    """Set a channel's initial value synchronously (before the server starts)."""
    _preset(channel, channel.preprocess_value(value))
    keep_nord(channel)


def preset_alarm(channel: ChannelData, status: AlarmStatus, severity: AlarmSeverity) -> None:
    """Set a channel's initial alarm synchronously (before the server starts)."""
    status, severity = AlarmStatus(status), AlarmSeverity(severity)
    alarm = channel.alarm
    # As ChannelAlarm.write: the severity to acknowledge (.ACKS) rises with the alarm.
    acks = alarm.severity_to_acknowledge
    if not alarm.must_acknowledge_transient or acks < severity:
        acks = severity
    alarm._data.update(status=status, severity=severity, severity_to_acknowledge=acks)
    # .STAT/.SEVR follow the alarm only when it is published; start them in step.
    fields: dict[str, ChannelData] = getattr(channel, "fields", {})
    for name, index in (("STAT", int(status)), ("SEVR", int(severity)), ("ACKS", int(acks))):
        if name in fields:
            _preset(fields[name], fields[name].enum_strings[index])


_STATE_STRING_FIELDS = (
    "ZRST", "ONST", "TWST", "THST", "FRST", "FVST", "SXST", "SVST",
    "EIST", "NIST", "TEST", "ELST", "TVST", "TTST", "FTST", "FFST",
)  # fmt: skip
_STATE_SEVERITY_FIELDS = (
    "ZRSV", "ONSV", "TWSV", "THSV", "FRSV", "FVSV", "SXSV", "SVSV",
    "EISV", "NISV", "TESV", "ELSV", "TVSV", "TTSV", "FTSV", "FFSV",
)  # fmt: skip


_MENU_ALARM_SEVR = {
    AlarmSeverity.NO_ALARM: "NO_ALARM",
    AlarmSeverity.MINOR_ALARM: "MINOR",
    AlarmSeverity.MAJOR_ALARM: "MAJOR",
    AlarmSeverity.INVALID_ALARM: "INVALID",
}  # EPICS menuAlarmSevr


_BASE_DEFAULTS = {
    # The record always holds a value; caproto starts UDF at 1.
    "UDF": 0,
    # No alarm limits: EPICS base's defaults (caproto has MINOR and MAJOR).
    "HHSV": "NO_ALARM",
    "HSV": "NO_ALARM",
    "LSV": "NO_ALARM",
    "LLSV": "NO_ALARM",
    # No links: empty (caproto shows "0").
    **dict.fromkeys(("INP", "OUT", "DOL", "FLNK", "SDIS", "TSEL", "SIOL", "SIML"), ""),
}


# (channel attribute, limit field, its severity field, the severity it gives), as an
# ai/ao/longin with HHSV=MAJOR, HSV=MINOR, LSV=MINOR, LLSV=MAJOR.
_ALARM_LIMITS = (
    ("upper_alarm_limit", "HIHI", "HHSV", "MAJOR"),
    ("upper_warning_limit", "HIGH", "HSV", "MINOR"),
    ("lower_warning_limit", "LOW", "LSV", "MINOR"),
    ("lower_alarm_limit", "LOLO", "LLSV", "MAJOR"),
)


def describe_record(
    channel: ChannelData, state_severities: Mapping[int, AlarmSeverity] | None = None
) -> None:
    """Fill in the record fields caproto leaves blank, then make every field read-only.

    ``.ASG`` reads READONLY for a read-only record (as in the templates), ``.EGU``
    the units, ``.FTVL`` CHAR for a char waveform, ``.DRVH``/``.DRVL`` and
    ``.HOPR``/``.LOPR`` the control and display limits, ``.HIHI``/``.HIGH``/``.LOW``/
    ``.LOLO`` with their severities the alarm limits that are set, the state names
    (``ZNAM``/``ONAM``, ``ZRST``…) the enum strings, and the ``xxSV`` fields
    of an mbbi/mbbo the severities in ``state_severities`` (state index → severity).
    """
    fields: dict[str, ChannelData] = getattr(channel, "fields", {})
    values: dict[str, Any] = {"ASG": READONLY_ASG if is_read_only(channel) else ""}
    values.update(_BASE_DEFAULTS)
    if getattr(channel, "units", ""):
        values["EGU"] = channel.units
    if getattr(channel, "precision", None) is not None:
        values["PREC"] = channel.precision
    if channel.data_type == ChannelType.CHAR:
        values["FTVL"] = "CHAR"
    if hasattr(channel, "upper_ctrl_limit"):
        values.update(DRVH=channel.upper_ctrl_limit, DRVL=channel.lower_ctrl_limit)
        values.update(HOPR=channel.upper_disp_limit, LOPR=channel.lower_disp_limit)
    for attr, limit_field, severity_field, severity in _ALARM_LIMITS:
        # caproto has no "no limit": 0 is none, as the templates leave them unset.
        limit = getattr(channel, attr, 0) or 0
        if limit:
            values.update({limit_field: limit, severity_field: severity})
    if channel.data_type == ChannelType.ENUM:
        # caproto links most of these to enum_strings, but not mbbo's ZRST.
        names = ("ZNAM", "ONAM") if "ZNAM" in fields else _STATE_STRING_FIELDS
        values.update(zip(names, channel.enum_strings, strict=False))
    for index, severity in (state_severities or {}).items():
        values[_STATE_SEVERITY_FIELDS[index]] = _MENU_ALARM_SEVR[AlarmSeverity(severity)]
    for name, value in values.items():
        if name in fields:
            preset_value(fields[name], value)
    for name in ("DISP", "PROC", "TPRO"):
        # caproto serves these one-byte fields with no element at all; genie_python
        # reads DISP before every put and refuses the put unless it reads 0.
        if name in fields and fields[name].value == b"":
            _preset(fields[name], b"\0")
    for field_channel in fields.values():
        # A per-instance override: caproto asks the channel itself (server/common.py).
        field_channel.check_access = _read_only
        # caproto writes a field's getter result back through the field's putter on
        # every read, and some putters write the record (reading AUTORESTART.ONST
        # would put AUTORESTART). Fields are read-only: a putter that only keeps
        # the value (None would drop the enum label verify_value makes).
        field_channel.putter = _keep_value


def records_of(channels: Iterable[ChannelData]) -> list[ChannelData]:
    """The channels plus their record fields, each once (for access rules)."""
    seen: dict[int, ChannelData] = {}
    for channel in channels:
        seen.setdefault(id(channel), channel)
        for field_channel in getattr(channel, "fields", {}).values():
            seen.setdefault(id(field_channel), field_channel)
    return list(seen.values())


# ---- logging ---------------------------------------------------------------

_REJECTIONS = (ValueError, TypeError, Forbidden)


class _OneLineRejections(logging.Filter):
    """caproto logs a refused put with ``log.exception``: keep it to one line.

    Only for the expected kinds of refusal (a bad value, a bad type, no write
    access); anything else, a bug, keeps its traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, _REJECTIONS) and str(record.msg).startswith("Invalid write request"):
            record.msg = f"{record.msg} rejected: %s"
            # caproto's conversion errors carry their reason in __cause__ only.
            reason = str(exc) or str(exc.__cause__ or "")
            record.args = (*(record.args or ()), f"{type(exc).__name__}: {reason}")  # type: ignore[misc]
            record.exc_info = None
            record.exc_text = None
        return True


def quiet_rejected_puts() -> None:
    """Install the one-line filter on caproto's circuit logger (idempotent)."""
    logger = logging.getLogger("caproto.circ")
    if not any(isinstance(f, _OneLineRejections) for f in logger.filters):
        logger.addFilter(_OneLineRejections())
