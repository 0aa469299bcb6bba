"""The server's protocol circuit: caproto's checks and tables, without its state machines
in the steady state."""

from __future__ import annotations

from typing import Any

import caproto as ca
import pytest
from caproto import ChannelType
from caproto._state import ChannelState

from bgrscrpt_ioc.ca.steady_circuit import SteadyCircuit

ADDR = ("127.0.0.1", 5064)


def connected(kind: type) -> tuple[Any, Any]:
    """A server circuit of ``kind`` with one connected channel (sid 7), as after a handshake."""
    circuit = kind(ca.SERVER, ADDR, None)
    circuit.process_command(ca.VersionRequest(priority=0, version=13))
    circuit.send(ca.VersionResponse(version=13))
    circuit.process_command(ca.CreateChanRequest(name="X", cid=1, version=13))
    circuit.send(
        ca.AccessRightsResponse(cid=1, access_rights=3),
        ca.CreateChanResponse(data_type=ChannelType.DOUBLE, data_count=1, cid=1, sid=7),
    )
    return circuit, circuit.channels[1]


def subscription_request() -> Any:
    """A TIME_DOUBLE subscription (id 5) to the channel of :func:`connected`."""
    return ca.EventAddRequest(
        data_type=ChannelType.TIME_DOUBLE,
        data_count=0,
        sid=7,
        subscriptionid=5,
        low=0,
        high=0,
        to=0,
        mask=1,
    )


def steady_traffic(circuit: Any, chan: Any) -> list[bytes]:
    """A put's request and reply and a subscription's updates; the bytes the server sent."""
    sent: list[bytes] = []
    circuit.process_command(
        ca.WriteNotifyRequest(data=[1.5], data_type=ChannelType.DOUBLE, data_count=1, sid=7, ioid=3)
    )
    sent.append(b"".join(circuit.send(chan.write(ioid=3, status=1, data_count=1))))
    circuit.process_command(subscription_request())
    for value in (1.0, 2.0):
        update = chan.subscribe(
            data=[value],
            data_type=ChannelType.TIME_DOUBLE,
            data_count=1,
            subscriptionid=5,
            status=1,
        )
        sent.append(b"".join(circuit.send(update)))
    return sent


def test_the_steady_state_sends_the_same_bytes_and_keeps_the_same_tables():
    stock, stock_chan = connected(ca.VirtualCircuit)
    steady, steady_chan = connected(SteadyCircuit)
    assert steady_traffic(steady, steady_chan) == steady_traffic(stock, stock_chan)
    for name in ("_ioids", "event_add_commands", "event_cancel_commands", "channels_sid"):
        assert getattr(steady, name).keys() == getattr(stock, name).keys(), name
    assert steady_chan.states.states == stock_chan.states.states
    assert steady.states.states == stock.states.states


def test_the_steady_state_runs_no_state_machine(monkeypatch):
    steady, chan = connected(SteadyCircuit)
    calls: list[type] = []
    original = ChannelState.process_command_type

    def counting(self: Any, role: Any, command_type: type) -> None:
        calls.append(command_type)
        original(self, role, command_type)

    monkeypatch.setattr(ChannelState, "process_command_type", counting)
    steady.process_command(
        ca.WriteNotifyRequest(data=[1.0], data_type=ChannelType.DOUBLE, data_count=1, sid=7, ioid=9)
    )
    steady.send(chan.write(ioid=9, status=1, data_count=1))
    # The EventAddRequest itself changes caproto's tables: its own path, with its checks.
    assert calls == []


@pytest.mark.parametrize("kind", [ca.VirtualCircuit, SteadyCircuit])
def test_what_caproto_refuses_is_still_refused(kind):
    circuit, chan = connected(kind)
    with pytest.raises(ca.RemoteProtocolError):  # a request for a channel never created
        circuit.process_command(
            ca.WriteNotifyRequest(
                data=[1.0], data_type=ChannelType.DOUBLE, data_count=1, sid=99, ioid=1
            )
        )
    with pytest.raises(ca.LocalProtocolError):  # a reply to no request
        circuit.send(chan.write(ioid=42, status=1, data_count=1))
    circuit.process_command(subscription_request())
    with pytest.raises(ca.LocalProtocolError):  # an update of another type than subscribed
        circuit.send(
            chan.subscribe(data=[1.0], data_type=ChannelType.DOUBLE, data_count=1, subscriptionid=5)
        )
    with pytest.raises(ca.LocalProtocolError):  # an update of no subscription
        circuit.send(
            chan.subscribe(
                data=[1.0], data_type=ChannelType.TIME_DOUBLE, data_count=1, subscriptionid=6
            )
        )


@pytest.mark.parametrize("kind", [ca.VirtualCircuit, SteadyCircuit])
def test_a_channel_cleared_refuses_its_put_as_caproto_does(kind):
    circuit, chan = connected(kind)
    circuit.process_command(ca.ClearChannelRequest(sid=7, cid=1))
    with pytest.raises(ca.RemoteProtocolError):
        circuit.process_command(
            ca.WriteNotifyRequest(
                data=[1.0], data_type=ChannelType.DOUBLE, data_count=1, sid=7, ioid=1
            )
        )


@pytest.mark.parametrize("status", [True, 1, ca.CAStatus.ECA_PUTFAIL])
def test_a_put_reply_is_the_bytes_caproto_sends(status):
    stock, stock_chan = connected(ca.VirtualCircuit)
    steady, _ = connected(SteadyCircuit)
    request = ca.WriteNotifyRequest(
        data=[1.0], data_type=ChannelType.DOUBLE, data_count=1, sid=7, ioid=3
    )
    stock.process_command(request)
    steady.process_command(request)
    expected = b"".join(stock.send(stock_chan.write(ioid=3, status=status, data_count=1)))
    assert steady.put_reply(3, 1, status) == expected
    assert steady._ioids.keys() == stock._ioids.keys()  # the ioid is forgotten by both
    assert steady.put_reply(3, 1, status) is None  # a second reply: caproto's way, which raises
