"""A put's monitor updates are read after its reply is written: the mixin, then over the wire."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from typing import Any

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from bgrscrpt_ioc.ca.channels import CheckedDouble
from bgrscrpt_ioc.ca.publish_after_reply import (
    PublishAfterReply,
    held_publications,
    publish_held,
)
from bgrscrpt_ioc.ca.sender import CoalescingSender

from .ca_raw import RawClient
from .ca_server import ca_server


class _Recorded:
    """Stands for caproto's ChannelData: records each publication with its flags."""

    def __init__(self, log: list[tuple[str, int]], name: str) -> None:
        self.log = log
        self.name = name

    async def publish(self, flags: int) -> None:
        self.log.append((self.name, flags))


class Channel(PublishAfterReply, _Recorded):
    pass


class Broken(PublishAfterReply, _Recorded):
    async def publish_now(self, flags: int) -> None:
        raise RuntimeError("a bug")


async def test_writes_in_a_batch_publish_after_it_once_per_channel_with_their_flags():
    log: list[tuple[str, int]] = []
    a, b = Channel(log, "a"), Channel(log, "b")
    held = held_publications()
    await a.publish(1)
    await b.publish(4)
    await a.publish(2)
    assert log == []  # nothing read or sent while the batch's replies are not written
    await publish_held(held)
    assert log == [("a", 3), ("b", 4)]  # in order of first write, flags joined


async def test_after_the_batch_and_outside_one_channels_publish_at_once():
    log: list[tuple[str, int]] = []
    a = Channel(log, "a")
    await a.publish(1)  # no batch in this task
    held = held_publications()
    await publish_held(held)
    await a.publish(2)
    assert log == [("a", 1), ("a", 2)]


async def test_a_task_started_in_a_batch_publishes_at_once_once_the_batch_is_over():
    log: list[tuple[str, int]] = []
    a = Channel(log, "a")
    go = asyncio.Event()

    async def later() -> None:
        await go.wait()
        await a.publish(8)

    held = held_publications()
    task = asyncio.create_task(later())  # inherits the batch's mark
    await publish_held(held)
    go.set()
    await task
    assert log == [("a", 8)]


async def test_one_channel_failing_does_not_stop_the_others(caplog):
    log: list[tuple[str, int]] = []
    broken, fine = Broken(log, "broken"), Channel(log, "fine")
    held = held_publications()
    await broken.publish(1)
    await fine.publish(1)
    with caplog.at_level(logging.ERROR):
        await publish_held(held)
    assert log == [("fine", 1)]
    assert "could not be published" in caplog.text


class Settings(PVGroup):
    x = pvproperty(
        value=0.0, dtype=CheckedDouble, name="X", lower_ctrl_limit=0, upper_ctrl_limit=10
    )


async def test_a_put_is_answered_first_and_its_update_carries_the_value(monkeypatch):
    group = Settings(f"PAR{uuid.uuid4().hex[:6].upper()}:")
    reads_after_reply: list[bool] = []
    channel = group.x
    original_read = type(channel)._read
    replies: list[int] = []

    async def read(self: Any, data_type: Any) -> Any:
        reads_after_reply.append(bool(replies))
        return await original_read(self, data_type)

    monkeypatch.setattr(type(channel), "_read", read)
    original_write_reply = CoalescingSender.write_reply

    def write_reply(self: Any, reply: bytes) -> None:
        replies.append(1)
        original_write_reply(self, reply)

    monkeypatch.setattr(CoalescingSender, "write_reply", write_reply)
    async with ca_server(group.pvdb, monkeypatch) as served:

        def client() -> tuple[list[str], list[float]]:
            c = RawClient(served.port)
            try:
                chan = c.channel(group.x.pvname)
                c.send(chan.subscribe(data_type=ChannelType.TIME_DOUBLE, subscriptionid=1))
                c.until(lambda: len(c.events()) == 1, "the first update")
                replies.clear()
                reads_after_reply.clear()
                start = len(c.received)
                c.write(chan, 7.5)
                c.until(lambda: len(c.events()) == 2, "the put's update")
                return (
                    [type(m).__name__ for m in c.received[start:]],
                    [float(e.data[0]) for e in c.events()],
                )
            finally:
                c.close()

        order, values = await asyncio.to_thread(client)
    assert order == ["WriteNotifyResponse", "EventAddResponse"], order
    assert values == [0.0, 7.5]
    assert reads_after_reply == [True]  # the update was read after the reply was written


BLOB_BYTES = 4000


class Busy(PVGroup):
    x = pvproperty(
        value=0.0, dtype=CheckedDouble, name="X", lower_ctrl_limit=0, upper_ctrl_limit=10
    )
    blob = pvproperty(value="b" * BLOB_BYTES, dtype=str, max_length=BLOB_BYTES, name="BLOB")


async def test_a_client_that_stopped_reading_holds_back_no_update_of_its_put(monkeypatch):
    """Its put is answered, then its reads' replies fill its connection and the circuit
    waits for it; the other clients get the put's update meanwhile, not once it is
    dropped."""
    monkeypatch.setenv("EPICS_CAS_SLOW_CLIENT_TMO", "30")
    group = Busy(f"PAS{uuid.uuid4().hex[:6].upper()}:")
    async with ca_server(group.pvdb, monkeypatch) as served:

        def watch_for_the_put() -> list[float]:
            c = RawClient(served.port, name="watcher")
            try:
                chan = c.channel(group.x.pvname)
                c.send(chan.subscribe(data_type=ChannelType.DOUBLE, subscriptionid=1))
                c.until(lambda: c.events(), "the first update")
                ready.set()
                c.until(lambda: float(c.events()[-1].data[0]) == 7.5, "the put's update")
                return [float(e.data[0]) for e in c.events()]
            finally:
                c.close()

        def stopped() -> RawClient:
            c = RawClient(served.port, name="stopped")
            x, blob = c.channel(group.x.pvname), c.channel(group.blob.pvname)
            put = x.write([7.5], ioid=c.next_ioid(), notify=True)
            reads = [blob.read(ioid=c.next_ioid()) for _ in range(3000)]  # 12 MB of replies
            c.send(put, *reads)  # and never reads again
            return c

        ready = threading.Event()
        watcher = asyncio.create_task(asyncio.to_thread(watch_for_the_put))
        await asyncio.to_thread(ready.wait, 10)
        client = await asyncio.to_thread(stopped)
        try:
            values = await asyncio.wait_for(watcher, 20)
            # The stopped client is still connected: the update did not wait for its end.
            assert len(served.context.circuits) == 2
            assert values[-1] == 7.5
        finally:
            client.close()
