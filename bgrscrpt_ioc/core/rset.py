"""What an EPICS base record says about each of its fields: units, precision, limits.

Pure code. A Channel Access client that asks for DBR_GR_* or DBR_CTRL_* gets
units, a precision and display, alarm and control limits with the value; an
EPICS base IOC fills them from the record support of the record's type
(``get_units``, ``get_precision``, ``get_graphic_double``,
``get_control_double``, ``get_alarm_double``), and from ``recGbl`` defaults for
the fields a record type does not describe. This module does the same for the
record types this IOC serves (longin, stringin, bo, bi, mbbi, mbbo, ai, ao,
waveform), from the record's own field values (``get(name)``).

Checked field by field against a real softIoc (tests/unit/test_dbr_base.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from .dbr import FLOAT_DBFS, Dbf, Value, max_range

NAN = math.nan
NO_ALARM_LIMITS = (NAN, NAN, NAN, NAN)

FieldGetter = Callable[[str], Value]
"""The value of another field of the same record, by name ("HOPR", "EGU" ...)."""


@dataclass(frozen=True)
class FieldInfo:
    """What a DBR_GR/DBR_CTRL read of one field carries besides the value."""

    units: str = ""
    precision: int = 0
    """The DBR precision: the record's, for FLOAT/DOUBLE fields of records that have one."""
    string_precision: int = 6
    """The precision base uses to show a FLOAT/DOUBLE field as DBR_STRING."""
    graphic: tuple[float, float] = (0.0, 0.0)
    """(upper, lower) display limits."""
    control: tuple[float, float] = (0.0, 0.0)
    """(upper, lower) control limits."""
    alarm: tuple[float, float, float, float] = NO_ALARM_LIMITS
    """(upper alarm, upper warning, lower warning, lower alarm); NaN where none is set."""


# The fields of longin and ao whose limits are the record's operating range.
_VALUE_LIKE = frozenset({"VAL", "HIHI", "HIGH", "LOW", "LOLO", "LALM", "ALST", "MLST"})
_AO_OUTPUTS = frozenset({"VAL", "OVAL", "PVAL"})


def field_info(record_type: str, field: str, dbf: Dbf, get: FieldGetter) -> FieldInfo:
    """What base's record support of ``record_type`` says about ``field`` (of type ``dbf``)."""
    describe = _RECORDS.get(record_type)
    if describe is None:
        return FieldInfo()
    return describe(field, dbf, get)


def _number(get: FieldGetter, name: str) -> float:
    return float(get(name))


def _range(get: FieldGetter, upper: str, lower: str) -> tuple[float, float]:
    return _number(get, upper), _number(get, lower)


def _alarm_limits(get: FieldGetter) -> tuple[float, float, float, float]:
    """A longin's or ao's alarm limits: each one only where its severity is set."""

    def limit(value: str, severity: str) -> float:
        return _number(get, value) if int(get(severity)) else NAN

    return (
        limit("HIHI", "HHSV"),
        limit("HIGH", "HSV"),
        limit("LOW", "LSV"),
        limit("LOLO", "LLSV"),
    )


def _precision_of_field(dbf: Dbf, prec: int) -> int:
    """``recGblGetPrec``: a FLOAT/DOUBLE field shows PREC (0..15), any other none."""
    if dbf not in FLOAT_DBFS:
        return 0
    return prec if 0 <= prec <= 15 else 15


def _longin(field: str, dbf: Dbf, get: FieldGetter) -> FieldInfo:
    limits = _range(get, "HOPR", "LOPR") if field in _VALUE_LIKE else max_range(dbf)
    return FieldInfo(
        units=str(get("EGU")) if dbf == Dbf.LONG else "",
        graphic=limits,
        control=limits,
        alarm=_alarm_limits(get) if field == "VAL" else NO_ALARM_LIMITS,
    )


def _ao(field: str, dbf: Dbf, get: FieldGetter) -> FieldInfo:
    prec = int(get("PREC"))
    precision = prec if field == "VAL" else _precision_of_field(dbf, prec)
    operating = _range(get, "HOPR", "LOPR")
    if field in _AO_OUTPUTS:
        control = _range(get, "DRVH", "DRVL")
    elif field in _VALUE_LIKE:
        control = operating
    else:
        control = max_range(dbf)
    return FieldInfo(
        units=str(get("EGU")) if dbf == Dbf.DOUBLE or field == "VAL" else "",
        precision=precision if dbf in FLOAT_DBFS else 0,
        string_precision=precision,
        graphic=operating if field in _VALUE_LIKE | _AO_OUTPUTS else max_range(dbf),
        control=control,
        alarm=_alarm_limits(get) if field == "VAL" else NO_ALARM_LIMITS,
    )


def _ai(field: str, dbf: Dbf, get: FieldGetter) -> FieldInfo:
    # As ao, without the output fields: the operating range is the control range too.
    prec = int(get("PREC"))
    precision = prec if field == "VAL" else _precision_of_field(dbf, prec)
    limits = _range(get, "HOPR", "LOPR") if field in _VALUE_LIKE else max_range(dbf)
    return FieldInfo(
        units=str(get("EGU")) if dbf == Dbf.DOUBLE or field == "VAL" else "",
        precision=precision if dbf in FLOAT_DBFS else 0,
        string_precision=precision,
        graphic=limits,
        control=limits,
        alarm=_alarm_limits(get) if field == "VAL" else NO_ALARM_LIMITS,
    )


def _waveform(field: str, dbf: Dbf, get: FieldGetter) -> FieldInfo:
    prec = int(get("PREC"))
    precision = prec if field == "VAL" else _precision_of_field(dbf, prec)
    if field == "VAL":
        limits = _range(get, "HOPR", "LOPR")
    elif field == "NORD":
        limits = (_number(get, "NELM"), 0.0)
    else:
        limits = max_range(dbf)
    return FieldInfo(
        units=str(get("EGU")) if field in ("VAL", "HOPR", "LOPR") else "",
        precision=precision if dbf in FLOAT_DBFS else 0,
        string_precision=precision,
        graphic=limits,
        control=limits,
    )


def _bo(field: str, dbf: Dbf, get: FieldGetter) -> FieldInfo:
    # HIGH (seconds a pulse stays high) is the one field bo describes itself.
    if field == "HIGH":
        return FieldInfo(units="s", precision=2, string_precision=2, control=(100000.0, 0.0))
    return FieldInfo(control=max_range(dbf))


def _undescribed(field: str, dbf: Dbf, get: FieldGetter) -> FieldInfo:
    """Record types without record support for metadata: zeros, and no alarm limits."""
    return FieldInfo()


_RECORDS: dict[str, Callable[[str, Dbf, FieldGetter], FieldInfo]] = {
    "longin": _longin,
    "ai": _ai,
    "ao": _ao,
    "waveform": _waveform,
    "bo": _bo,
    "bi": _undescribed,
    "mbbi": _undescribed,
    "mbbo": _undescribed,
    "stringin": _undescribed,
}
