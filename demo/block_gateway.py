"""What IBEX's block gateway and block server add around a simulated instrument's blocks.

genie_python does not read a block only under the name it was given: ``cget``
and friends read ``CS:SB:<BLOCK>`` in capitals (IBEX's gateway serves every block
under both spellings), its run control ``CS:SB:<BLOCK>:RC:ENABLE|LOW|HIGH``, its
``.SEVR`` and ``.EGU`` fields, and the block server's list of block names
``CS:BLOCKSERVER:BLOCKNAMES`` (zlib-compressed JSON, hex encoded, in a char
waveform). A simulation that wants genie_python to answer as on an instrument
serves these too:

- build each block with :func:`block` (an ``ai`` record, so fields exist);
- add :func:`runcontrol` and :func:`block_names` to the group;
- call :func:`alias_blocks` on the finished pvdb (it also fills each block's ``.EGU``
  from its units, which caproto's ``ai`` record leaves empty, and gives the
  one-byte fields such as ``.DISP`` their value 0: caproto serves them with no
  element at all, and genie_python reads ``.DISP`` before every write).
"""

from __future__ import annotations

import binascii
import json
import zlib
from collections.abc import Iterable, MutableMapping
from typing import Any

from caproto import ChannelType
from caproto.server import pvproperty

BLOCK_PREFIX = "CS:SB:"
BLOCK_NAMES_PV = "CS:BLOCKSERVER:BLOCKNAMES"
RC_STATES = ("NO", "YES")


def compress_and_hex(text: str) -> str:
    """The block server's encoding: zlib, then hex (as text)."""
    return binascii.hexlify(zlib.compress(text.encode("utf-8"))).decode("ascii")


def block(name: str, value: Any = 0.0, **kw: Any) -> pvproperty:
    """``CS:SB:<name>`` as an ``ai`` record, with an alarm of its own."""
    kw.setdefault("record", "ai")
    kw.setdefault("alarm_group", name)
    return pvproperty(name=f"{BLOCK_PREFIX}{name}", value=value, **kw)


def runcontrol(names: Iterable[str]) -> dict[str, pvproperty]:
    """Run-control PVs of each block, ``CS:SB:<BLOCK>:RC:ENABLE`` (NO/YES), ``LOW``, ``HIGH``."""
    body: dict[str, pvproperty] = {}
    for index, name in enumerate(names):
        base = f"{BLOCK_PREFIX}{name.upper()}:RC:"
        body[f"rc_enable_{index}"] = pvproperty(
            name=base + "ENABLE", value="NO", dtype=ChannelType.ENUM, enum_strings=RC_STATES,
            record="bo", alarm_group=f"{name}:RC",
        )  # fmt: skip
        body[f"rc_low_{index}"] = pvproperty(
            name=base + "LOW", value=0.0, record="ao", alarm_group=f"{name}:RC"
        )
        body[f"rc_high_{index}"] = pvproperty(
            name=base + "HIGH", value=0.0, record="ao", alarm_group=f"{name}:RC"
        )
    return body


def block_names(names: Iterable[str]) -> pvproperty:
    """``CS:BLOCKSERVER:BLOCKNAMES``: the names, as the block server encodes them."""
    # NUL-terminated, as an EPICS char waveform holding a string is: a client reading
    # the whole array stops there.
    text = compress_and_hex(json.dumps(list(names))) + "\0"
    return pvproperty(
        name=BLOCK_NAMES_PV, value=text, dtype=str, max_length=max(16000, len(text) + 1),
        read_only=True, alarm_group="blockserver",
    )  # fmt: skip


def zero_byte_fields(pvdb: MutableMapping[str, Any]) -> None:
    """Give the one-byte record fields (``.DISP``, ``.PROC``, ``.TPRO``) the value 0 an
    EPICS record has: caproto serves them with no element, and genie_python, which
    reads ``.DISP`` before every put, then refuses the put."""
    for channel in list(pvdb.values()):
        for field in getattr(channel, "fields", {}).values():
            if field.data_type == ChannelType.CHAR and field.value == b"":
                field._data["value"] = b"\0"


def alias_blocks(
    pvdb: MutableMapping[str, Any], prefix: str, names: Iterable[str], setpoints: Iterable[str] = ()
) -> None:
    """Serve each block also as ``CS:SB:<BLOCK>`` in capitals, and its run control also
    under the block's own spelling, as IBEX's gateway does (one PV, two names). The
    blocks in ``setpoints`` point at a setpoint: the gateway also serves them with
    ``:SP`` appended (where genie's ``cset`` writes)."""
    setpoints = set(setpoints)
    from bgrscrpt_ioc.ca.channels import preset_value

    zero_byte_fields(pvdb)
    for name in names:
        channel = pvdb[f"{prefix}{BLOCK_PREFIX}{name}"]
        fields = getattr(channel, "fields", {})
        units = getattr(channel, "units", "")
        if "EGU" in fields and units:
            preset_value(fields["EGU"], channel.units)
        upper = name.upper()
        spellings = {name, upper}
        for spelling in spellings:
            pvdb[f"{prefix}{BLOCK_PREFIX}{spelling}"] = channel
            if name in setpoints:
                pvdb[f"{prefix}{BLOCK_PREFIX}{spelling}:SP"] = channel
        if upper == name:
            continue
        for suffix in ("ENABLE", "LOW", "HIGH"):
            rc = f"{prefix}{BLOCK_PREFIX}{upper}:RC:{suffix}"
            if rc in pvdb:
                pvdb[f"{prefix}{BLOCK_PREFIX}{name}:RC:{suffix}"] = pvdb[rc]
