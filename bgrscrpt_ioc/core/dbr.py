"""How EPICS base converts a field's value to the DBR type a Channel Access client asks for.

Pure code: values in, values out. A Channel Access client may ask for any of the
seven value types (STRING, SHORT, FLOAT, ENUM, CHAR, LONG, DOUBLE) whatever the
field's own type; an EPICS base IOC converts (dbConvert.c, cvtFast.c,
epicsStdlib.c, epicsConvert.c) and refuses a few conversions, the client then
getting ECA_GETFAIL. This module does the same, down to base's quirks:

* a string is parsed as C's ``strtol``/``strtod`` parse its longest valid
  prefix ("0.1.0" reads 0 as an integer, 0.1 as a double), "" reads 0, and a
  string with no number at all, or out of range, is refused, as is every
  string read as ENUM;
* a double becomes an integer as a C cast does on x86 (truncated; NaN and
  anything outside 32 bits become -2**31) and is then cut to 16 or 8 bits;
* a double becomes a float clamped to +-FLT_MAX and +-FLT_MIN;
* a double becomes a string with base's own formatting for the field's
  precision ("12.8" for 12.75 with PREC 1; "%e" style past 1e16 or PREC 8).

The tests hold every rule to a real EPICS base IOC (tests/unit/test_dbr_base.py).
"""

from __future__ import annotations

import math
import re
import struct
from collections.abc import Callable, Sequence
from enum import Enum, IntEnum

Value = int | float | str
Converter = Callable[[Value], Value]

FLT_MAX = 3.4028234663852886e38
FLT_MIN = 1.1754943508222875e-38
DBL_MIN = 2.2250738585072014e-308
MAX_STRING_SIZE = 40
"""Bytes of a DBR_STRING element, its terminating NUL included."""


class Dbf(Enum):
    """An EPICS field type (DBF_*), as far as a conversion cares."""

    STRING = "STRING"
    CHAR = "CHAR"  # epicsInt8: a waveform of CHAR
    UCHAR = "UCHAR"
    SHORT = "SHORT"
    USHORT = "USHORT"
    LONG = "LONG"
    ULONG = "ULONG"
    FLOAT = "FLOAT"
    DOUBLE = "DOUBLE"
    ENUM = "ENUM"  # a record's own states (bo, mbbi ...)
    MENU = "MENU"  # a field from a fixed menu (SCAN, STAT, HHSV ...)
    LINK = "LINK"  # INP, OUT, FLNK ...: shown as text


INTEGER_DBFS = frozenset({Dbf.CHAR, Dbf.UCHAR, Dbf.SHORT, Dbf.USHORT, Dbf.LONG, Dbf.ULONG})
FLOAT_DBFS = frozenset({Dbf.FLOAT, Dbf.DOUBLE})
ENUM_DBFS = frozenset({Dbf.ENUM, Dbf.MENU})


class Request(IntEnum):
    """The value type of a DBR request: the DBR type modulo 7 (DBR_STRING ... DBR_DOUBLE)."""

    STRING = 0
    SHORT = 1
    FLOAT = 2
    ENUM = 3
    CHAR = 4
    LONG = 5
    DOUBLE = 6


class Refused(ValueError):
    """EPICS base refuses this conversion: the client gets ECA_GETFAIL."""


def native_request(dbf: Dbf) -> Request:
    """The DBR type base reports as a field's native type (what ``cainfo`` shows).

    Base reports an unsigned 32-bit field as DOUBLE and an unsigned 16-bit one
    as LONG, the old DBR types having no unsigned kinds of their size.
    """
    return _NATIVE[dbf]


_NATIVE = {
    Dbf.STRING: Request.STRING,
    Dbf.CHAR: Request.CHAR,
    Dbf.UCHAR: Request.CHAR,
    Dbf.SHORT: Request.SHORT,
    Dbf.USHORT: Request.LONG,
    Dbf.LONG: Request.LONG,
    Dbf.ULONG: Request.DOUBLE,
    Dbf.FLOAT: Request.FLOAT,
    Dbf.DOUBLE: Request.DOUBLE,
    Dbf.ENUM: Request.ENUM,
    Dbf.MENU: Request.ENUM,
    Dbf.LINK: Request.STRING,
}


# ---- integers as C casts them -----------------------------------------------------


def wrap(value: int, bits: int, *, signed: bool) -> int:
    """``value`` cut to its low ``bits`` bits, as a C cast to a narrower integer."""
    value &= (1 << bits) - 1
    if signed and value >= 1 << (bits - 1):
        value -= 1 << bits
    return value


def double_to_int32(value: float) -> int:
    """``(epicsInt32)value`` on x86: truncated; NaN or out of range gives -2**31."""
    if math.isnan(value) or math.isinf(value):
        return -(2**31)
    whole = math.trunc(value)
    if not -(2**31) <= whole < 2**31:
        return -(2**31)
    return whole


def double_to_float(value: float) -> float:
    """``epicsConvertDoubleToFloat``: a float32, clamped to +-FLT_MAX and +-FLT_MIN."""
    if value == 0.0:
        return 0.0
    if math.isnan(value) or math.isinf(value):
        return value
    magnitude = abs(value)
    if magnitude <= FLT_MIN:
        return math.copysign(FLT_MIN, value)
    if magnitude >= FLT_MAX:
        return math.copysign(FLT_MAX, value)
    return float32(value)


def float32(value: float) -> float:
    """``value`` rounded to the nearest float32 (which must exist)."""
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


# ---- strings as epicsParse* read them ------------------------------------------

_SPACE = " \t\n\v\f\r"
_INTEGER = re.compile(r"[+-]?[0-9]+")
_HEX_FLOAT = re.compile(
    r"[+-]?0[xX](?:[0-9a-fA-F]+\.?[0-9a-fA-F]*|\.[0-9a-fA-F]+)(?:[pP][+-]?[0-9]+)?"
)
_SPECIAL = re.compile(r"([+-]?)(inf(?:inity)?|nan(?:\([0-9A-Za-z_]*\))?)", re.IGNORECASE)
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def parse_integer(text: str, low: int, high: int) -> int:
    """``epicsParseLong`` in base 10 with trailing text allowed, then a range check."""
    match = _INTEGER.match(text.lstrip(_SPACE))
    if match is None:
        raise Refused(f"no integer in {text!r}")
    value = int(match.group())
    if not low <= value <= high:
        raise Refused(f"{value} is outside {low}..{high}")
    return value


def parse_double(text: str) -> float:
    """``epicsParseDouble`` (glibc ``strtod``) with trailing text allowed.

    Refused when there is no number, or on overflow or underflow (ERANGE).
    """
    text = text.lstrip(_SPACE)
    match = _HEX_FLOAT.match(text)
    if match is not None:
        value = float.fromhex(match.group())
        digits = match.group().split("p")[0].split("P")[0]
    elif (special := _SPECIAL.match(text)) is not None:
        sign = -1.0 if special.group(1) == "-" else 1.0
        return math.copysign(math.nan if special.group(2)[0] in "nN" else math.inf, sign)
    elif (match := _DECIMAL.match(text)) is not None:
        digits = re.split("[eE]", match.group())[0]
        try:
            value = float(match.group())
        except OverflowError:  # pragma: no cover - float() gives inf rather than raising
            raise Refused(f"{text!r} overflows a double") from None
    else:
        raise Refused(f"no number in {text!r}")
    if math.isinf(value):
        raise Refused(f"{text!r} overflows a double")
    nonzero = any(c not in "+-.0xX" for c in digits)
    if nonzero and abs(value) < DBL_MIN:
        raise Refused(f"{text!r} underflows a double")
    return value


def parse_float(text: str) -> float:
    """``epicsParseFloat``: ``parse_double``, refused past FLT_MAX or (positive) below FLT_MIN."""
    value = parse_double(text)
    if value > 0 and value <= FLT_MIN:
        raise Refused(f"{text!r} underflows a float")
    if math.isfinite(value) and abs(value) >= FLT_MAX:
        raise Refused(f"{text!r} overflows a float")
    return float32(value) if math.isfinite(value) else value


# ---- doubles as strings, as cvtDoubleToString writes them ------------------------


def format_double(value: float, precision: int) -> str:
    """``cvtDoubleToString(value, precision)``: what base shows for a double as DBR_STRING.

    ``precision`` is the record's (PREC, or 6 when the record has none); base
    takes it as an unsigned 16-bit number, so -1 means the most, 17.
    """
    precision &= 0xFFFF
    if math.isnan(value) or precision > 8 or not -1e7 <= value <= 1e7:
        if precision > 8 or value >= 1e16 or value <= -1e16:
            precision = min(precision, 17)
            return f"{value:{precision + 7}.{precision}e}"
        return f"{value:.{min(precision, 3)}f}"
    sign = ""
    if value < 0:
        sign, value = "-", -value
    whole = math.trunc(value)
    fplace = 10**precision
    # The same double arithmetic as C, so that the same values round the same way.
    fraction = int((value - whole) * fplace * 10)
    fraction = (fraction + 5) // 10
    if fraction // fplace >= 1:
        whole += 1
        fraction -= fplace
    text = f"{sign}{whole}"
    if precision > 0:
        text += "." + str(fraction).rjust(precision, "0")
    return text


# ---- the conversion -------------------------------------------------------------


def enum_label(index: int, labels: Sequence[str]) -> str:
    """What base shows for state ``index`` of an enum as DBR_STRING."""
    if 0 <= index < len(labels):
        return labels[index]
    return "Illegal Value"


def convert(
    values: Sequence[Value],
    source: Dbf,
    target: Request,
    *,
    precision: int = 6,
    labels: Sequence[str] = (),
) -> list[Value]:
    """``values`` of a ``source`` field as EPICS base sends them for a ``target`` request.

    STRING fields hold ``str``; ENUM and MENU fields the state index; integer
    fields ``int``; FLOAT and DOUBLE fields ``float``. ``precision`` is the
    record's precision for this field (used for a double as a string);
    ``labels`` the state names of an ENUM or MENU field. Raises ``Refused``
    where base refuses the conversion.
    """
    convert_one = _converter(source, target, precision, labels)
    return [convert_one(value) for value in values]


def _converter(source: Dbf, target: Request, precision: int, labels: Sequence[str]) -> Converter:
    if source == Dbf.STRING:
        return _from_string(target)
    if source == Dbf.LINK:
        return _from_link(target)
    if source in FLOAT_DBFS:
        return _from_double(target, precision)
    if source in ENUM_DBFS and target == Request.STRING:
        return lambda index: enum_label(int(index), labels)
    return _from_integer(target)


def _from_string(target: Request) -> Converter:
    def convert_one(value: Value) -> Value:
        text = str(value)
        if target == Request.STRING:
            return text
        if target == Request.ENUM:
            raise Refused("a string is never read as an enum")
        if text == "":
            return 0.0 if target in (Request.FLOAT, Request.DOUBLE) else 0
        if target == Request.SHORT:
            return parse_integer(text, -(2**15), 2**15 - 1)
        if target == Request.CHAR:
            return wrap(parse_integer(text, -(2**7), 2**7 - 1), 8, signed=False)
        if target == Request.LONG:
            return parse_integer(text, -(2**31), 2**31 - 1)
        if target == Request.FLOAT:
            return parse_float(text)
        return parse_double(text)

    return convert_one


def _from_link(target: Request) -> Converter:
    """A link field: its text; as CHAR its first byte, as DOUBLE NaN; nothing else."""

    def convert_one(value: Value) -> Value:
        text = str(value)
        if target == Request.STRING:
            return text
        if target == Request.CHAR:
            return text.encode("latin-1", "replace")[0] if text else 0
        if target == Request.DOUBLE:
            return math.nan
        raise Refused("a link is read as a string, CHARs or DOUBLE only")

    return convert_one


def _from_double(target: Request, precision: int) -> Converter:
    def convert_one(value: Value) -> Value:
        number = float(value)
        if target == Request.STRING:
            return format_double(number, precision)
        if target == Request.DOUBLE:
            return number
        if target == Request.FLOAT:
            return double_to_float(number)
        whole = double_to_int32(number)
        if target == Request.LONG:
            return whole
        if target == Request.SHORT:
            return wrap(whole, 16, signed=True)
        if target == Request.ENUM:
            return wrap(whole, 16, signed=False)
        return wrap(whole, 8, signed=False)

    return convert_one


def _from_integer(target: Request) -> Converter:
    def convert_one(value: Value) -> Value:
        number = int(value)
        if target == Request.STRING:
            return str(number)
        if target == Request.DOUBLE:
            return float(number)
        if target == Request.FLOAT:
            return float32(float(number))
        if target == Request.LONG:
            return wrap(number, 32, signed=True)
        if target == Request.SHORT:
            return wrap(number, 16, signed=True)
        if target == Request.ENUM:
            return wrap(number, 16, signed=False)
        return wrap(number, 8, signed=False)

    return convert_one


def string_as_state(text: str, names: Sequence[str]) -> int:
    """A string field of a bo, bi, mbbi or mbbo record read as DBR_ENUM, as base reads it.

    ``names`` are the record's state names (ZNAM, ONAM; or ZRST..FFST). Base
    hands the text to the record as a state name: one of them reads 0 (and
    base sets the record's VAL to it; this does not). Otherwise a whole number
    below the count of states reads as itself; anything else is refused.
    """
    if any(names) and text in names:
        return 0
    count = max((i + 1 for i, name in enumerate(names) if name), default=0)
    stripped = text.strip(_SPACE)
    if stripped.isdigit() and int(stripped) < min(count, 2**16):
        return int(stripped)
    raise Refused(f"{text!r} is not a state of the record")


def limit_as(value: float, target: Request) -> Value:
    """A display, alarm or control limit (a double in base) in a ``target`` DBR structure.

    As base fills DBR_GR_* and DBR_CTRL_*: a float is clamped, an integer is a
    C cast, and NaN (an alarm limit that is not set) becomes 0.
    """
    if target == Request.DOUBLE:
        return value
    if target == Request.FLOAT:
        return double_to_float(value)
    if math.isnan(value):
        return 0
    whole = double_to_int32(value)
    if target == Request.LONG:
        return whole
    if target == Request.SHORT:
        return wrap(whole, 16, signed=True)
    return wrap(whole, 8, signed=False)


def max_range(dbf: Dbf) -> tuple[float, float]:
    """(upper, lower): the limits base gives a field with no limits of its own
    (``recGblGetGraphicDouble``, ``recGblGetControlDouble``)."""
    return _MAX_RANGE.get(dbf, (0.0, 0.0))


_MAX_RANGE = {
    Dbf.CHAR: (127.0, -128.0),
    Dbf.UCHAR: (255.0, 0.0),
    Dbf.SHORT: (32767.0, -32768.0),
    Dbf.USHORT: (65535.0, 0.0),
    Dbf.ENUM: (65535.0, 0.0),
    Dbf.LONG: (2147483647.0, -2147483648.0),
    Dbf.ULONG: (4294967295.0, 0.0),
    Dbf.FLOAT: (1e30, -1e30),
    Dbf.DOUBLE: (1e300, -1e300),
}
