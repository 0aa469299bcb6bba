"""A put to a scalar PV is answered once the PV has accepted it, and stored in the same
step of the event loop, before anything else can read the PV."""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any

import caproto as ca
from caproto.server import PVGroup, pvproperty

from bgrscrpt_ioc.ca.answer_on_accept import accepted, answer_ended, answer_on_accept
from bgrscrpt_ioc.ca.channels import CheckedDouble
from bgrscrpt_ioc.ca.sender import CoalescingSender

from .ca_raw import RawClient
from .ca_server import ca_server


def test_only_the_put_s_own_channel_answers_it_and_only_once():
    sent: list[str] = []
    mine, other = object(), object()
    answer = answer_on_accept(mine, lambda: sent.append("answer"))
    accepted(other)  # a write the putter made to another PV
    assert sent == [] and not answer.sent
    accepted(mine)
    accepted(mine)
    assert sent == ["answer"] and answer.sent
    answer_ended()


def test_once_the_put_s_write_is_over_nothing_answers_it():
    sent: list[str] = []
    mine = object()
    answer = answer_on_accept(mine, lambda: sent.append("answer"))
    answer_ended()
    accepted(mine)
    assert sent == [] and not answer.sent


async def test_a_task_the_putter_started_never_answers_the_put():
    """It inherits the put's context; by the time it writes, the put is answered."""
    sent: list[str] = []
    mine = object()
    answer_on_accept(mine, lambda: sent.append("answer"))
    go = asyncio.Event()

    async def later_write() -> None:
        await go.wait()
        accepted(mine)

    task = asyncio.create_task(later_write())  # started by the putter, say
    accepted(mine)
    answer_ended()
    go.set()
    await task
    assert sent == ["answer"]

    answer_on_accept(mine, lambda: sent.append("second"))
    task = asyncio.create_task(later_write())
    go.clear()
    answer_ended()  # the put's write ended without the channel accepting it
    go.set()
    await task
    assert sent == ["answer"]


class Broken(CheckedDouble):
    async def update_fields(self, value: Any) -> None:
        raise RuntimeError("a bug in the store")


class Group(PVGroup):
    x = pvproperty(value=0.0, dtype=CheckedDouble, name="X")
    wave = pvproperty(value=[0.0, 0.0], dtype=CheckedDouble, name="WAVE", max_length=4)
    broken = pvproperty(value=0.0, dtype=Broken, name="BROKEN")


async def _put_watching_the_reply(
    monkeypatch: Any, group: Group, channel: Any, value: float
) -> tuple[Any, list[Any], list[Any]]:
    """Put ``value`` to ``channel`` (alone in a read); the reply, the PV's value when
    the reply was written, and its value at the loop's next turn after that."""
    at_reply: list[Any] = []
    next_turn: list[Any] = []
    original = CoalescingSender.write_reply

    def write_reply(self: Any, reply: bytes) -> None:
        if reply[:2] == b"\x00\x13":  # WriteNotifyResponse
            at_reply.append(list(channel.value) if channel.max_length > 1 else channel.value)
            asyncio.get_running_loop().call_soon(lambda: next_turn.append(channel.value))
        original(self, reply)

    async with ca_server(group.pvdb, monkeypatch) as served:
        monkeypatch.setattr(CoalescingSender, "write_reply", write_reply)

        def client() -> Any:
            c = RawClient(served.port)
            try:
                chan = c.channel(channel.pvname)
                reply = c.write(chan, value)
                c.read(chan)  # the server is still there
                return reply
            finally:
                c.close()

        reply = await asyncio.to_thread(client)
    return reply, at_reply, next_turn


async def test_the_reply_goes_out_before_the_store_and_nothing_runs_between(monkeypatch):
    group = Group(f"ANS{uuid.uuid4().hex[:6].upper()}:")
    reply, at_reply, next_turn = await _put_watching_the_reply(monkeypatch, group, group.x, 4.0)
    assert isinstance(reply, ca.WriteNotifyResponse)
    assert at_reply == [0.0]  # answered once accepted, before the value was stored
    assert next_turn == [4.0]  # stored before the loop could run anything else
    assert group.x.value == 4.0


async def test_a_put_to_an_array_pv_is_answered_after_the_store(monkeypatch):
    """Its reply carries the element count after the write."""
    group = Group(f"ANS{uuid.uuid4().hex[:6].upper()}:")
    reply, at_reply, _ = await _put_watching_the_reply(monkeypatch, group, group.wave, 4.0)
    assert isinstance(reply, ca.WriteNotifyResponse)
    assert reply.data_count == 1
    assert at_reply == [[4.0]]


async def test_a_store_failing_after_the_answer_is_logged_and_the_ioc_serves_on(
    monkeypatch, caplog
):
    group = Group(f"ANS{uuid.uuid4().hex[:6].upper()}:")
    with caplog.at_level(logging.ERROR):
        reply, _, _ = await _put_watching_the_reply(monkeypatch, group, group.broken, 4.0)
    assert isinstance(reply, ca.WriteNotifyResponse)  # it had been answered as done
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("failed" in m for m in errors)
    assert any("answered as done before it failed" in m for m in errors)
    assert group.broken.alarm.severity == ca.AlarmSeverity.MAJOR_ALARM  # caproto's WRITE alarm
