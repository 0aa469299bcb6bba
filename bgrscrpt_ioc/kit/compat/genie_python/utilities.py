"""Helpers of ``genie_python.utilities`` that scripts and this package use.

IBEX's servers exchange lists (block names, instruments) as JSON, compressed
with zlib and hex encoded, in char waveforms.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from datetime import timedelta
from typing import Any


def compress_and_hex(value: str) -> bytes:
    """``value`` compressed with zlib, as hex digits."""
    return zlib.compress(value.encode("utf-8")).hex().encode("ascii")


def dehex_and_decompress(value: bytes | str) -> str:
    """The text that ``compress_and_hex`` encoded."""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    return zlib.decompress(bytes.fromhex(value)).decode("utf-8")


def dehex_decompress_and_dejson(value: bytes | str) -> Any:
    """The object in a hexed, compressed JSON value (block names, the instrument list)."""
    return json.loads(dehex_and_decompress(value))


def waveform_to_string(data: Iterable[int | str]) -> str:
    """A char waveform (numbers, or single characters) as text, up to its first NUL."""
    out = []
    for item in data:
        if item == 0:
            break
        out.append(item if isinstance(item, str) else chr(item))
    return "".join(out)


def remove_field_from_pv(pv: str) -> str:
    """``IN:X:T.RVAL`` -> ``IN:X:T``; a name without a field is returned as it is."""
    return pv.split(".")[0] if "." in pv else pv


def crc8(value: str) -> str:
    """CRC-8 (polynomial x^8+x^2+x+1, initial 0) of ``value``'s UTF-8, as two hex digits;
    IBEX shortens instrument names longer than 8 characters with it."""
    if value == "":
        return ""
    crc = 0
    for byte in value.encode("utf-8"):
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return f"{crc:02X}"


def check_lowlimit_against_highlimit(lowlimit: float | None, highlimit: float | None) -> None:
    """Warn (print) when a low limit is above a high limit."""
    if lowlimit is not None and highlimit is not None and lowlimit > highlimit:
        print(f"WARNING: You have set the lowlimit({lowlimit}) above the highlimit({highlimit})")


def get_time_delta(
    seconds: float | None, minutes: float | None, hours: float | None
) -> timedelta | None:
    """The total of the given parts (None counts as 0); None when all are None."""
    if seconds is None and minutes is None and hours is None:
        return None
    return timedelta(hours=hours or 0, minutes=minutes or 0, seconds=seconds or 0)
