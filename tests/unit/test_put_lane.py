"""A read holding one put of one value skips caproto's message layers and gets what
caproto's way gives: the same reply, the same refusal, the same PV afterwards."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import caproto as ca
import pytest
from caproto import ChannelType
from caproto._commands import extract_data
from caproto.server import PVGroup, pvproperty

from bgrscrpt_ioc.ca.channels import CheckedDouble, CheckedEnum
from bgrscrpt_ioc.ca.put_lane import lone_put
from bgrscrpt_ioc.ca.steady_circuit import SteadyCircuit

from .ca_raw import RawClient
from .ca_server import ca_server


def _request(data_type: ChannelType, value: Any, *, notify: bool = True) -> Any:
    request = ca.WriteNotifyRequest if notify else ca.WriteRequest
    return request(data=[value], data_type=data_type, data_count=1, sid=7, ioid=3)


def _bytes(*commands: Any) -> bytes:
    return b"".join(bytes(c.header) + b"".join(bytes(b) for b in c.buffers) for c in commands)


@pytest.mark.parametrize(
    ("data_type", "value"),
    [
        (ChannelType.DOUBLE, 2.5),
        (ChannelType.FLOAT, -1.5),
        (ChannelType.LONG, -70000),
        (ChannelType.INT, 300),
        (ChannelType.ENUM, 2),
        (ChannelType.CHAR, 65),
    ],
)
@pytest.mark.parametrize("notify", [True, False])
def test_one_put_of_one_number_is_recognised_with_caproto_s_value(data_type, value, notify):
    request = _request(data_type, value, notify=notify)
    put = lone_put(_bytes(request))
    assert put is not None
    assert (put.notify, put.data_type, put.sid, put.ioid) == (notify, data_type, 7, 3)
    ours = extract_data(put.payload, put.data_type, 1)
    assert ours.tolist() == request.data.tolist()


def test_anything_else_is_left_to_caproto():
    put = _request(ChannelType.DOUBLE, 1.0)
    one = _bytes(put)
    others = {
        "two puts": one + one,
        "a put and an echo": one + _bytes(ca.EchoRequest()),
        "half a put": one[:20],
        "nothing": b"",
        "a string": _bytes(_request(ChannelType.STRING, b"On")),
        "two values": _bytes(
            ca.WriteNotifyRequest(
                data=[1.0, 2.0], data_type=ChannelType.DOUBLE, data_count=2, sid=7, ioid=3
            )
        ),
        "a read": _bytes(ca.ReadNotifyRequest(ChannelType.DOUBLE, 1, 7, 3)) + bytes(8),
        "a put with metadata": _bytes(_request(ChannelType.TIME_DOUBLE, 1.0)),
    }
    for what, data in others.items():
        assert lone_put(data) is None, what


class Settings(PVGroup):
    x = pvproperty(
        value=0.0, dtype=CheckedDouble, name="X", lower_ctrl_limit=0, upper_ctrl_limit=10
    )
    mode = pvproperty(value="A", dtype=CheckedEnum, name="MODE", enum_strings=("A", "B", "C"))

    @x.putter  # type: ignore[no-redef]
    async def x(self, instance: Any, value: float) -> float:
        if value == 3.0:
            raise ValueError("3 is not allowed")
        return value


def _reply_fields(reply: Any) -> tuple[Any, ...]:
    if isinstance(reply, ca.ErrorResponse):
        original = reply.original_request
        return (
            "error",
            reply.header.parameter2,  # the status code
            reply.error_message,
            original.command,
            original.data_type,
            original.data_count,
        )
    return ("done", reply.data_type, reply.data_count, reply.header.parameter1)


async def _put_both_ways(
    monkeypatch: Any, pvname: str, value: Any, data_type: ChannelType
) -> dict[str, tuple[Any, ...]]:
    """Put ``value`` to ``pvname`` of a fresh group twice: alone in a read (the lane)
    and followed by an echo in the same read (caproto's way). What each got in
    reply, and the PV's value and alarm after it."""
    outcome = {}
    for way in ("lane", "caproto"):
        group = Settings(f"LANE{uuid.uuid4().hex[:6].upper()}:")
        channel = getattr(group, pvname)
        async with ca_server(group.pvdb, monkeypatch) as served:

            def client(name: str = channel.pvname, way: str = way) -> Any:
                c = RawClient(served.port)
                try:
                    chan = c.channel(name)
                    ioid = c.next_ioid()
                    put = ca.WriteNotifyRequest(
                        data=[value], data_type=data_type, data_count=1, sid=chan.sid, ioid=ioid
                    )
                    extra = [ca.EchoRequest()] if way == "caproto" else []
                    c.send(put, *extra)
                    return c.until(lambda: c._reply(ioid), "the put's reply")
                finally:
                    c.close()

            reply = await asyncio.to_thread(client)
        outcome[way] = (
            _reply_fields(reply),
            channel.value,
            channel.alarm.status,
            channel.alarm.severity,
        )
    return outcome


@pytest.mark.parametrize(
    ("pvname", "value", "data_type"),
    [
        ("x", 4.5, ChannelType.DOUBLE),
        ("x", 7, ChannelType.LONG),
        ("mode", 2, ChannelType.ENUM),
        ("mode", 1, ChannelType.INT),
    ],
)
async def test_a_lone_put_gets_the_reply_and_leaves_the_pv_as_caproto_s_way(
    monkeypatch, pvname, value, data_type
):
    outcome = await _put_both_ways(monkeypatch, pvname, value, data_type)
    assert outcome["lane"] == outcome["caproto"]
    assert outcome["lane"][0][0] == "done"


@pytest.mark.parametrize(
    ("pvname", "value", "data_type"),
    [
        ("x", 11.0, ChannelType.DOUBLE),  # outside the control limits
        ("x", 3.0, ChannelType.DOUBLE),  # the putter refuses it
        ("mode", 5, ChannelType.ENUM),  # no such state
    ],
)
async def test_a_refused_lone_put_gets_caproto_s_refusal_and_changes_nothing(
    monkeypatch, caplog, pvname, value, data_type
):
    with caplog.at_level(logging.INFO):
        outcome = await _put_both_ways(monkeypatch, pvname, value, data_type)
    assert outcome["lane"] == outcome["caproto"]
    assert outcome["lane"][0][:2] == ("error", ca.CAStatus.ECA_PUTFAIL.value.code_with_severity)

    assert outcome["lane"][1] == Settings.__dict__[pvname].pvspec.value  # unchanged
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 2  # one line per way, no traceback
    assert all(r.exc_info is None for r in caplog.records)


async def test_a_lone_put_skips_caproto_s_message_layers(monkeypatch):
    """The lane is taken: caproto never parses the read of a lone put."""
    group = Settings(f"LANE{uuid.uuid4().hex[:6].upper()}:")
    parsed: list[int] = []
    original = SteadyCircuit.recv  # the server's protocol circuit (caproto's recv)

    def recv(self: Any, *data: Any) -> Any:
        parsed.append(1)
        return original(self, *data)

    async with ca_server(group.pvdb, monkeypatch) as served:

        def client() -> Any:
            c = RawClient(served.port)
            try:
                chan = c.channel(group.x.pvname)
                monkeypatch.setattr(SteadyCircuit, "recv", recv)  # from here on
                return c.write(chan, 6.0)
            finally:
                c.close()

        reply = await asyncio.to_thread(client)
    assert isinstance(reply, ca.WriteNotifyResponse)
    assert group.x.value == 6.0
    assert parsed == []
