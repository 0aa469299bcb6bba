"""Channel Access reads answered as EPICS base answers them: every DBR type, base's metadata.

A client may read any PV as any DBR type. caproto 1.3 gets several of them
wrong, each against what an EPICS base IOC serving the same record does:

* a string that is not a plain number (``BGRSCRPT:VERSION`` "0.1.0") read as
  DBR_DOUBLE, CHAR, CTRL_LONG ... fails with ECA_INTERNAL and two tracebacks in
  the log, where base reads "0.1.0" as 0.1 (or refuses with ECA_GETFAIL, quietly);
* DBR_GR_STRING and DBR_CTRL_STRING go out in the wrong layout (the value
  shifted behind a time stamp);
* alarm limits read 0 where base says NaN (none set), a bo's control limits
  0 where base says 0..65535, a double as a string ignores the record's PREC,
  a char waveform as a string is its text where base sends each element's
  number, and record fields carry caproto's own defaults (UDF 1, HHSV MAJOR...).

:class:`BaseReads` is a mixin for caproto's ``ChannelData`` classes that
converts and describes each read with the rules of EPICS base
(:mod:`bgrscrpt_ioc.core.dbr`, :mod:`bgrscrpt_ioc.core.rset`). Record fields
get it through :func:`record_fields`, the record types' field groups with every
field class given the mixin, which ``pvproperty(record=...)`` accepts.
:class:`RefusedReads`, a mixin for the server's circuit class, answers a read
that base would refuse with ECA_GETFAIL, as base does, instead of a traceback.
"""

from __future__ import annotations

import copy
import functools
import logging
from collections.abc import Sequence
from typing import Any

import caproto as ca
from caproto import ChannelData, ChannelType
from caproto._backend import backend
from caproto._dbr import DBR_TYPES, DbrStringArray, TimeStamp, _LongStringChannelType
from caproto.server import PVGroup
from caproto.server.records import records as _caproto_records

from ..core.dbr import (
    ENUM_DBFS,
    FLOAT_DBFS,
    MAX_STRING_SIZE,
    Dbf,
    Refused,
    Request,
    Value,
    convert,
    limit_as,
    native_request,
    string_as_state,
)
from ..core.rset import FieldInfo, field_info
from .publish_after_reply import PublishAfterReply

log = logging.getLogger(__name__)

_PLAIN, _STS, _TIME, _GR, _CTRL = range(5)
# caproto describes DBR_GR_STRING and DBR_CTRL_STRING with DBR_TIME_STRING's
# layout; on the wire they are DBR_STS_STRING.
_DBR = {
    **DBR_TYPES,
    ChannelType.GR_STRING: DBR_TYPES[ChannelType.STS_STRING],
    ChannelType.CTRL_STRING: DBR_TYPES[ChannelType.STS_STRING],
}
_LIMITS = (
    ("upper_disp_limit", "graphic", 0),
    ("lower_disp_limit", "graphic", 1),
    ("upper_alarm_limit", "alarm", 0),
    ("upper_warning_limit", "alarm", 1),
    ("lower_warning_limit", "alarm", 2),
    ("lower_alarm_limit", "alarm", 3),
    ("upper_ctrl_limit", "control", 0),
    ("lower_ctrl_limit", "control", 1),
)
_STATE_STRING_FIELDS = (
    "ZRST", "ONST", "TWST", "THST", "FRST", "FVST", "SXST", "SVST",
    "EIST", "NIST", "TEST", "ELST", "TVST", "TTST", "FTST", "FFST",
)  # fmt: skip
_MAX_UNITS = 7  # bytes of DBR units, NUL excluded
_MAX_LABEL = 25  # bytes of a DBR enum string, NUL excluded

# The value field of each record type this IOC serves.
_VAL_DBF = {
    "longin": Dbf.LONG,
    "stringin": Dbf.STRING,
    "bo": Dbf.ENUM,
    "bi": Dbf.ENUM,
    "mbbi": Dbf.ENUM,
    "mbbo": Dbf.ENUM,
    "ao": Dbf.DOUBLE,
    "waveform": Dbf.CHAR,  # FTVL CHAR
}
# Fields whose EPICS type caproto's record definitions do not keep: unsigned
# 32-bit (DBF_ULONG, which base reports as DOUBLE) and 16-bit (DBF_USHORT,
# reported as LONG); caproto has them as signed.
_STATE_VALUES = {
    f"{state}VL": Dbf.ULONG
    for state in ("ZR", "ON", "TW", "TH", "FR", "FV", "SX", "SV")
    + ("EI", "NI", "TE", "EL", "TV", "TT", "FT", "FF")
}
_RAW = {"RVAL": Dbf.ULONG, "ORAW": Dbf.ULONG, "MASK": Dbf.ULONG}
_MBB = {**_RAW, **_STATE_VALUES, "NOBT": Dbf.USHORT, "SHFT": Dbf.USHORT}
_FIELD_DBF: dict[str, dict[str, Dbf]] = {
    "bo": {**_RAW, "ORBV": Dbf.ULONG, "MLST": Dbf.USHORT, "LALM": Dbf.USHORT},
    "bi": {**_RAW, "MLST": Dbf.USHORT, "LALM": Dbf.USHORT},
    "mbbi": _MBB,
    "mbbo": {**_MBB, "ORBV": Dbf.ULONG},
    "waveform": {"NELM": Dbf.ULONG, "NORD": Dbf.ULONG},
}
# Link fields: caproto has them as plain strings.
_LINKS = frozenset({"INP", "OUT", "DOL", "FLNK", "SDIS", "TSEL", "SIOL", "SIML"})
# The record types whose state names a string field can be read against as
# DBR_ENUM (their record support's put_enum_str and get_enum_strs).
_STATE_NAMES = {
    "bo": ("ZNAM", "ONAM"),
    "bi": ("ZNAM", "ONAM"),
    "mbbi": _STATE_STRING_FIELDS,
    "mbbo": _STATE_STRING_FIELDS,
}
_ENUM_TYPES = {Dbf.ENUM, Dbf.MENU}


class BaseReads(PublishAfterReply):
    """Mixin for caproto ``ChannelData`` classes: reads converted as EPICS base converts.

    Put it first in the bases. A PV declared with ``record="longin"`` (a
    name) gets :func:`record_fields` for its fields, and still reports
    ``record_type`` "longin".

    ``read`` (a client's read) raises :class:`~bgrscrpt_ioc.core.dbr.Refused`
    where base would refuse; ``_read`` (monitor updates) sends zeros instead,
    which is what base puts in such an update besides its ECA_GETFAIL status,
    a status caproto 1.3 has no way to send in a monitor update.
    """

    def __init__(self, *args: Any, record: Any = None, **kwargs: Any) -> None:
        if isinstance(record, str):
            record = record_fields(record)
        super().__init__(*args, record=record, **kwargs)  # type: ignore[call-arg]
        if record is not None:
            # caproto would report the class; clients and templates want the name.
            self.record_type = self.reported_record_type = record._record_type
        self._epics_dbf: Dbf | None = None
        unsigned = self._unsigned_dbf()
        if unsigned is not None:
            # Reported as base reports it: the unsigned type's bigger signed cousin.
            self.data_type = ChannelType(int(native_request(unsigned)))

    # ---- what this channel is, in EPICS terms -------------------------------------

    def _record(self) -> Any:
        """The record channel this is a field of, or this channel itself (its VAL)."""
        group = getattr(self, "group", None)
        parent = getattr(group, "parent", None)
        if parent is not None and getattr(group, "_record_type", None) is not None:
            return parent
        return self

    def _field(self) -> str:
        return "VAL" if self._record() is self else str(self.pvspec.name)  # type: ignore[attr-defined]

    def _unsigned_dbf(self) -> Dbf | None:
        """The field's type where caproto has it signed (see ``_FIELD_DBF``)."""
        if self._record() is self:
            return None
        record_type = str(getattr(getattr(self, "group", None), "_record_type", ""))
        return _FIELD_DBF.get(record_type, {}).get(self._field())

    def epics_dbf(self) -> Dbf:
        """The EPICS field type of this channel (its record's VAL, or a field)."""
        if self._epics_dbf is None:
            self._epics_dbf = self._find_dbf()
        return self._epics_dbf

    def _find_dbf(self) -> Dbf:
        data_type = ChannelType(self.data_type)  # type: ignore[attr-defined]
        record = self._record()
        if record is self:
            found = _VAL_DBF.get(str(getattr(self, "record_type", "")))
            if found is not None and native_request(found) == Request(data_type):
                return found
        elif (unsigned := self._unsigned_dbf()) is not None:
            return unsigned
        elif self._field() in _LINKS and data_type == ChannelType.STRING:
            return Dbf.LINK
        return {
            ChannelType.STRING: Dbf.STRING,
            ChannelType.INT: Dbf.SHORT,
            ChannelType.LONG: Dbf.LONG,
            ChannelType.FLOAT: Dbf.FLOAT,
            ChannelType.DOUBLE: Dbf.DOUBLE,
            ChannelType.ENUM: Dbf.ENUM if record is self else Dbf.MENU,
            ChannelType.CHAR: Dbf.CHAR if record is self else Dbf.UCHAR,
        }[data_type]

    def _labels(self) -> tuple[str, ...]:
        return tuple(getattr(self, "enum_strings", ()) or ())

    def epics_values(self) -> list[Value]:
        """The value as the EPICS field holds it: text, state index, numbers."""
        dbf = self.epics_dbf()
        value = self._data["value"]  # type: ignore[attr-defined]
        encoding = self.string_encoding or "latin-1"  # type: ignore[attr-defined]
        if dbf in (Dbf.STRING, Dbf.LINK):
            if isinstance(value, bytes):
                value = value.decode(encoding, "replace")
            return [str(value)]
        if dbf in _ENUM_TYPES:
            return [_state_index(value, self._labels())]
        if dbf in (Dbf.CHAR, Dbf.UCHAR) and isinstance(value, str | bytes):
            raw = value.encode(encoding, "replace") if isinstance(value, str) else value
            if not raw and self.max_length == 1:  # type: ignore[attr-defined]
                return [0]  # caproto keeps a one-byte field's 0 as b""
            if dbf == Dbf.CHAR:
                return [b - 256 if b > 127 else b for b in raw]
            return list(raw)
        items = list(value) if _is_sequence(value) else [value]
        if dbf in FLOAT_DBFS:
            return [float(v) for v in items]
        return [int(v) for v in items]

    def epics_info(self) -> FieldInfo:
        """Units, precision and limits, from the record as base's record support gives them."""
        record = self._record()
        record_type = getattr(record, "record_type", None)
        fields = getattr(record, "fields", None)
        if not record_type or not fields:
            return FieldInfo()
        return field_info(str(record_type), self._field(), self.epics_dbf(), _getter(fields))

    # ---- reads ------------------------------------------------------------------

    async def read(self, data_type: ChannelType) -> Any:
        """A client's read: the getter as caproto runs it, then the value as base converts it.

        Raises ``Refused`` where base refuses the conversion.
        """
        getter = getattr(self, "getter", None)
        if getter is not None:
            value = await getter(self)
            if value is not None:
                await self.write(value)  # type: ignore[attr-defined]
        return await self._read_as(data_type)

    async def check_read(self, data_type: ChannelType) -> None:
        """Raise ``Refused`` if the value cannot be read as ``data_type`` (base would refuse)."""
        await self._read_as(data_type)

    async def _read(self, data_type: ChannelType) -> Any:
        try:
            return await self._read_as(data_type)
        except Refused:
            return zero_read(data_type)

    async def _read_as(self, data_type: ChannelType) -> Any:
        if data_type in (
            ChannelType.STSACK_STRING,
            ChannelType.CLASS_NAME,
        ) or isinstance(data_type, _LongStringChannelType):
            return await super()._read(data_type)  # type: ignore[misc]
        data_type = ChannelType(data_type)
        family, request = divmod(int(data_type), 7)
        fast = (
            family <= _TIME
            and request == int(self.data_type)  # type: ignore[attr-defined]
            and self._record() is self
            and native_request(self.epics_dbf()) == Request(request)
        )
        if fast:
            # The field's own type, status and time: caproto's read is base's.
            return await super()._read(data_type)  # type: ignore[misc]
        return self._convert(data_type, family, Request(request))

    def _convert(self, data_type: ChannelType, family: int, request: Request) -> Any:
        dbf = self.epics_dbf()
        info = self.epics_info()
        labels = self._labels()
        values = self._quirk(dbf, request)
        if values is None:
            values = convert(
                self.epics_values(),
                dbf,
                request,
                precision=info.string_precision,
                labels=labels,
            )
        encoding = self.string_encoding or "latin-1"  # type: ignore[attr-defined]
        wire = to_wire(values, request, encoding)
        if family == _PLAIN:
            return b"", wire
        record = self._record()
        metadata = _DBR[data_type]()
        metadata.status = int(record.alarm.status)
        metadata.severity = int(record.alarm.severity)
        if family == _TIME:
            metadata.stamp = record.epics_timestamp
        if family >= _GR:
            if request == Request.ENUM:
                shown = labels if dbf in ENUM_DBFS else ()
                metadata.enum_strings = [
                    label.encode(encoding, "replace")[:_MAX_LABEL] for label in shown
                ]
            elif request != Request.STRING:
                _describe(metadata, info, request, encoding)
        return metadata, wire

    def _quirk(self, dbf: Dbf, request: Request) -> list[Value] | None:
        """Reads of record fields that base answers its own way (None: the usual rules)."""
        record = self._record()
        if record is self:
            return None
        if self._field() == "RTYP" and request == Request.CHAR:
            return [0]  # base's record-type pseudo-field, as a CHAR
        names = _STATE_NAMES.get(str(getattr(record, "record_type", "")))
        if dbf == Dbf.STRING and request == Request.ENUM and names is not None:
            # Base asks the record to take the text as one of its states (setting
            # its VAL, which this does not do) and answers 0 when it is one.
            get = _getter(record.fields)
            return [string_as_state(str(self.epics_values()[0]), [str(get(n)) for n in names])]
        return None

    async def update_fields(self, value: Any) -> None:
        await super().update_fields(value)  # type: ignore[misc]
        if self._record() is self:
            keep_nord(self)

    async def write_metadata(
        self, publish: bool = True, timestamp: Any = None, **others: Any
    ) -> None:
        if not publish and timestamp is not None and not others:
            # A write of the value (a put, a record's RVAL following its VAL): only
            # its time changes. caproto would first go through its ten other
            # keywords, each looked up with locals().
            self._data["timestamp"] = TimeStamp.from_flexible_value(timestamp)  # type: ignore[attr-defined]
            return
        await super().write_metadata(publish=publish, timestamp=timestamp, **others)  # type: ignore[misc]


def _describe(metadata: Any, info: FieldInfo, request: Request, encoding: str) -> None:
    metadata.units = info.units.encode(encoding, "replace")[:_MAX_UNITS]
    if hasattr(metadata, "precision"):
        metadata.precision = info.precision
    for attribute, kind, index in _LIMITS:
        if hasattr(metadata, attribute):
            limit: int | float | str | bytes = limit_as(getattr(info, kind)[index], request)
            if request == Request.CHAR:
                limit = bytes([int(limit)])  # caproto declares CHAR limits as c_char
            setattr(metadata, attribute, limit)


def _is_sequence(value: Any) -> bool:
    return isinstance(value, list | tuple) or (
        hasattr(value, "__len__") and not isinstance(value, str | bytes)
    )


def _state_index(value: Any, labels: Sequence[str]) -> int:
    if isinstance(value, str):
        if value in labels:
            return labels.index(value)
        return int(value) if value.strip().isdigit() else 0
    return int(value)


def _getter(fields: dict[str, ChannelData]) -> Any:
    """``get(name)``: a record field's value, a menu field as its index."""

    def get(name: str) -> Value:
        channel = fields[name]
        value = channel.value
        labels = getattr(channel, "enum_strings", None)
        if labels:
            return _state_index(value, tuple(labels))
        if isinstance(value, bytes):
            return value.decode("latin-1")
        return value  # type: ignore[no-any-return]

    return get


def to_wire(values: Sequence[Value], request: Request, encoding: str) -> Any:
    """Converted values in the form caproto sends them for a ``request`` type."""
    if request == Request.STRING:
        return DbrStringArray(
            str(v).encode(encoding, "replace")[: MAX_STRING_SIZE - 1] for v in values
        )
    return backend.python_to_epics(ChannelType(int(request)), list(values), byteswap=True)


def zero_read(data_type: ChannelType) -> tuple[Any, Any]:
    """What base puts in a read it refuses: metadata and one value, all zeros."""
    family, request = divmod(int(data_type), 7)
    values: list[Value] = [""] if request == Request.STRING else [0]
    wire = to_wire(values, Request(request), "latin-1")
    return (b"" if family == _PLAIN else _DBR[ChannelType(data_type)]()), wire


def keep_nord(channel: Any) -> None:
    """A waveform's NORD (elements in use) follows its value, as in base."""
    fields = getattr(channel, "fields", None) or {}
    nord = fields.get("NORD")
    if nord is not None and getattr(channel, "record_type", None) == "waveform":
        nord._data["value"] = channel.length


# ---- the classes -------------------------------------------------------------------


@functools.cache
def reading(cls: type) -> type:
    """``cls`` (a caproto ChannelData class) with :class:`BaseReads` mixed in."""
    if issubclass(cls, BaseReads):
        return cls
    return type(cls.__name__, (BaseReads, cls), {"__module__": __name__})


@functools.cache
def record_fields(record_type: str) -> type:
    """caproto's field group of ``record_type``, every field class with :class:`BaseReads`.

    Passed as ``pvproperty(record=...)``, which takes a field group class as
    well as a record type name.
    """
    base = _caproto_records[record_type]
    overrides: dict[str, Any] = {}
    for attr, prop in base._pvs_.items():
        field_class = prop.pvspec.get_data_class(base)
        new = copy.copy(prop)
        new.pvspec = prop.pvspec._replace(dtype=reading(field_class))
        overrides[attr] = new
    return type(base.__name__, (base,), {"__module__": __name__, **overrides})


class BasePVGroup(PVGroup):
    """A PVGroup whose PVs, declared with ``dtype=int``, ``str``, ``ChannelType.X`` ...,
    read as EPICS base's (:class:`BaseReads`)."""

    type_map = {key: reading(cls) for key, cls in PVGroup.type_map.items()}
    type_map_read_only = {key: reading(cls) for key, cls in PVGroup.type_map_read_only.items()}


# ---- the circuit ---------------------------------------------------------------------


class RefusedReads:
    """Mixin for caproto's asyncio ``VirtualCircuit``: a read base would refuse is
    answered as base answers it, with ECA_GETFAIL, and nothing in the log.

    caproto answers any exception in a read with ECA_INTERNAL and a traceback in
    the log, for every read. A subscription whose first value cannot be
    converted is answered with an ECA_GETFAIL update and not kept (caproto
    could not carry the status in later updates).
    """

    async def _process_command(self, command: Any) -> Any:
        if not isinstance(command, ca.ReadNotifyRequest | ca.ReadRequest | ca.EventAddRequest):
            return await super()._process_command(command)  # type: ignore[misc]
        try:
            if isinstance(command, ca.EventAddRequest):
                chan, db_entry = self._get_db_entry_from_command(command)  # type: ignore[attr-defined]
                if isinstance(db_entry, BaseReads) and not chan.name.endswith("$"):
                    await db_entry.check_read(command.data_type)
            return await super()._process_command(command)  # type: ignore[misc]
        except Refused as exc:
            return self._refused(command, exc)

    def _refused(self, command: Any, reason: Refused) -> list[Any]:
        chan, _ = self._get_db_entry_from_command(command)  # type: ignore[attr-defined]
        log.debug("%s: read as %s refused: %s", chan.name, command.data_type, reason)
        status = ca.CAStatus.ECA_GETFAIL
        if isinstance(command, ca.ReadRequest):
            cid = self.circuit.channels_sid[command.sid].cid  # type: ignore[attr-defined]
            return [ca.ErrorResponse(command, cid, status=status, error_message=str(reason))]
        metadata, data = zero_read(command.data_type)
        if isinstance(command, ca.EventAddRequest):
            return [
                chan.subscribe(
                    data=data,
                    metadata=metadata,
                    data_type=command.data_type,
                    data_count=1,
                    subscriptionid=command.subscriptionid,
                    status=status,
                )
            ]
        return [
            chan.read(
                data=data,
                metadata=metadata,
                data_type=command.data_type,
                data_count=1,
                status=status,
                ioid=command.ioid,
                notify=True,
            )
        ]
