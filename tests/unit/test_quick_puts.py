"""The put path's shortcuts give what caproto's long way gives."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from typing import Any

import numpy as np
import pytest
from caproto import ChannelDouble, ChannelType
from caproto.server import PVGroup, pvproperty

from bgrscrpt_ioc.ca.channels import CheckedDouble, CheckedEnum, PutRejected, _QuickAlarmLimits

NAN = math.nan
CTRL = [(0.0, 0.0), (0.0, 10.0)]
ALARM = [(NAN, NAN), (1.0, 9.0), (3.0, 3.0)]
WARNING = [(NAN, NAN), (2.0, 8.0), (9.5, 0.5)]
VALUES = [-1.0, 0.0, 0.5, 1.0, 1.5, 2.0, 5.0, 8.0, 9.0, 9.5, 10.0, 11.0, NAN, [4.0], [1.0, 2.0]]


async def _outcome(channel: Any, value: Any) -> tuple[Any, ...]:
    try:
        returned = await channel.verify_value(value)
    except Exception as exc:
        return ("raised", type(exc), str(exc))
    return ("returned", repr(returned), channel._status, channel._severity)


LIMITS = list(itertools.product(CTRL, ALARM, WARNING))


@pytest.mark.parametrize(("ctrl", "alarm", "warning"), LIMITS)
def test_quick_alarm_limits_decide_as_caproto(ctrl, alarm, warning):
    limits = {
        "lower_ctrl_limit": ctrl[0],
        "upper_ctrl_limit": ctrl[1],
        "lower_alarm_limit": alarm[0],
        "upper_alarm_limit": alarm[1],
        "lower_warning_limit": warning[0],
        "upper_warning_limit": warning[1],
    }

    async def both() -> list[tuple[Any, Any]]:
        out = []
        for value in VALUES:
            quick = _QuickAlarmLimits(value=0.0, **limits)
            stock = ChannelDouble(value=0.0, **limits)
            out.append((await _outcome(quick, value), await _outcome(stock, value)))
        return out

    for quick, stock in asyncio.run(both()):
        assert quick == stock


class Group(PVGroup):
    x = pvproperty(
        value=0.0, dtype=CheckedDouble, name="X", lower_ctrl_limit=0.0, upper_ctrl_limit=10.0
    )


def test_a_double_put_stores_the_value_as_caproto_does_and_stamps_it():
    async def run() -> tuple[Any, ...]:
        quick, slow = Group("Q:").x, Group("S:").x
        before = time.time()
        wire = np.array([2.5], dtype=">f8")  # a DOUBLE put as it comes off the wire
        await quick.write_from_dbr(wire, ChannelType.DOUBLE, None)
        # The long way: the same value as a FLOAT, which caproto converts.
        await slow.write_from_dbr(np.array([2.5], dtype=">f4"), ChannelType.FLOAT, None)
        return quick.value, slow.value, quick.timestamp, before

    quick_value, slow_value, stamp, before = asyncio.run(run())
    assert quick_value == slow_value == 2.5
    assert type(quick_value) is type(slow_value)
    assert before <= stamp <= time.time()


def test_a_double_put_outside_the_control_limits_is_refused_and_changes_nothing():
    async def run() -> tuple[Any, Any]:
        x = Group("R:").x
        with pytest.raises(ValueError, match="Limits"):
            await x.write_from_dbr(np.array([11.0], dtype=">f8"), ChannelType.DOUBLE, None)
        return x.value, x.timestamp

    value, _ = asyncio.run(run())
    assert value == 0.0


def test_metadata_other_than_the_time_still_goes_through_caproto():
    async def run() -> tuple[Any, Any]:
        x = Group("M:").x
        await x.write_metadata(units="mm", timestamp=1_700_000_000.5)
        return x.units, x.timestamp

    units, stamp = asyncio.run(run())
    assert units == "mm"
    assert stamp == 1_700_000_000.5


class Modes(PVGroup):
    mode = pvproperty(
        value="b", dtype=CheckedEnum, enum_strings=["a", "b", "c"], name="MODE", record="mbbo"
    )


def test_an_enum_put_of_an_index_stores_the_label_caproto_would_and_follows_its_rval():
    async def run() -> tuple[Any, ...]:
        quick, slow = Modes("QE:").mode, Modes("SE:").mode
        await quick.write_from_dbr(np.array([2], dtype=">u2"), ChannelType.ENUM, None)
        # The long way: the same index as a LONG, which caproto converts.
        await slow.write_from_dbr(np.array([2], dtype=">i4"), ChannelType.LONG, None)
        rval = quick.field_inst.raw_value.value, slow.field_inst.raw_value.value
        return quick.value, slow.value, rval

    quick_value, slow_value, (quick_rval, slow_rval) = asyncio.run(run())
    assert quick_value == slow_value == "c"
    assert quick_rval == slow_rval == 2


def test_an_enum_index_out_of_range_goes_the_long_way_to_caproto_s_refusal():
    async def run() -> tuple[str, Any]:
        mode = Modes("RE:").mode
        with pytest.raises(PutRejected) as refused:
            await mode.write_from_dbr(np.array([7], dtype=">u2"), ChannelType.ENUM, None)
        return str(refused.value), mode.value

    message, value = asyncio.run(run())
    assert message.startswith("not a valid value: Invalid enum index"), message  # caproto's
    assert value == "b"
