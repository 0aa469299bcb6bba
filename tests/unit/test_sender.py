"""The coalescing sender against a fake transport whose client reads, or stops reading, on cue."""

from __future__ import annotations

import asyncio
import logging

import pytest

from bgrscrpt_ioc.ca.sender import ClientTooSlow, CoalescingSender
from bgrscrpt_ioc.core.flow import SlowClientBound

HIGH = 100


class FakeTransport:
    """Takes every write; while the client is stopped the bytes stay in the buffer."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []  # what the client has received, write by write
        self.buffer: list[bytes] = []
        self.reading = True
        self.closed = False
        self._drained = asyncio.Event()

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        if self.reading:
            self.sent.append(data)
        else:
            self.buffer.append(data)
            self._drained.clear()

    def get_write_buffer_size(self) -> int:
        return sum(map(len, self.buffer))

    def is_closing(self) -> bool:
        return self.closed

    async def drain(self) -> None:
        while self.buffer and not self.closed:
            await self._drained.wait()
        if self.closed:
            raise ConnectionResetError("closed")

    def stop_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True
        self.sent += self.buffer
        self.buffer.clear()
        self._drained.set()

    def close(self) -> None:
        self.closed = True
        self._drained.set()

    def updates(self) -> list[str]:
        return [u.strip() for chunk in self.sent for u in chunk.decode().split(";") if u]


def build(item: tuple[str, int]) -> bytes:
    """An update on the wire: 20 bytes, ``key=value`` padded."""
    key, value = item
    return f"{key}={value}".ljust(19).encode() + b";"


def make(transport: FakeTransport, seconds: float = 30.0, max_bytes: int = 10**6, **kw):
    slow: list[str] = []

    def on_slow(reason: str) -> None:
        slow.append(reason)
        transport.close()

    sender = CoalescingSender(
        transport,
        transport.drain,
        kw.pop("build", build),
        bound=SlowClientBound(seconds=seconds, max_bytes=max_bytes),
        on_slow=on_slow,
        high_water=HIGH,
        chunk=kw.pop("chunk", 1),
    )
    return sender, slow


async def until(condition, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def turns(n: int = 5) -> None:
    """Let the loop run every ready task ``n`` times (a woken sender sends within one)."""
    for _ in range(n):
        await asyncio.sleep(0)


def fill_buffer(sender: CoalescingSender, transport: FakeTransport) -> None:
    """Stop the client and queue enough that the buffer is above its high-water mark."""
    transport.stop_reading()
    for n in range(HIGH // 4):
        sender.offer(f"fill{n}", ("fill", n), 10)


async def test_updates_go_out_in_order_while_the_client_reads():
    transport = FakeTransport()
    sender, _ = make(transport)
    task = asyncio.create_task(sender.run())
    for n in range(3):
        sender.offer("a", ("a", n), 10)
        sender.offer("b", ("b", n), 10)
        await until(lambda n=n: f"b={n}" in transport.updates())
    assert transport.updates() == ["a=0", "b=0", "a=1", "b=1", "a=2", "b=2"]
    sender.close()
    await asyncio.wait_for(task, 1)


async def test_while_the_client_is_stopped_only_the_latest_update_per_key_waits():
    transport = FakeTransport()
    sender, slow = make(transport)
    task = asyncio.create_task(sender.run())
    fill_buffer(sender, transport)
    await until(lambda: transport.get_write_buffer_size() > HIGH)
    await until(lambda: sender.behind_since is not None)
    for n in range(1000):  # offering never waits, however far behind the client is
        sender.offer("a", ("a", n), 10)
        sender.offer("b", ("b", n), 10)
    assert sender.waiting <= 2 + HIGH // 4
    assert sender.replaced >= 1998
    transport.resume_reading()
    await until(lambda: "b=999" in transport.updates())
    tail = [u for u in transport.updates() if u[0] in "ab"]
    assert tail == ["a=999", "b=999"]  # each key once, the latest value, first-come order
    assert slow == [] and sender.behind_since is None
    sender.close()
    await asyncio.wait_for(task, 1)


async def test_a_client_behind_longer_than_the_bound_is_given_up_once():
    transport = FakeTransport()
    sender, slow = make(transport, seconds=0.2)
    task = asyncio.create_task(sender.run())
    fill_buffer(sender, transport)
    # A reply waiting for room at the same time shares the bound, and the one report.
    reply = asyncio.create_task(sender.wait_writable())
    with pytest.raises(ClientTooSlow):
        await asyncio.wait_for(task, 5)
    with pytest.raises(ClientTooSlow):
        await asyncio.wait_for(reply, 5)
    assert len(slow) == 1 and "bound 0.2 s" in slow[0], slow
    sender.offer("late", ("late", 1), 10)  # ignored: the circuit is being closed
    assert sender.waiting == 0


async def test_a_client_behind_with_too_many_bytes_waiting_is_given_up_at_once():
    transport = FakeTransport()
    sender, slow = make(transport, max_bytes=5000)
    task = asyncio.create_task(sender.run())
    fill_buffer(sender, transport)
    await until(lambda: sender.behind_since is not None)
    for n in range(1000):
        sender.offer(f"k{n}", ("k", n), 10)  # 10 bytes each, all different keys
        if slow:
            break
    assert len(slow) == 1 and "bytes waiting" in slow[0] and n < 1000
    with pytest.raises(ClientTooSlow):
        await asyncio.wait_for(task, 5)


async def test_bytes_waiting_while_the_client_keeps_up_never_count():
    transport = FakeTransport()
    sender, slow = make(transport, max_bytes=50)
    task = asyncio.create_task(sender.run())
    for n in range(100):  # 1000 bytes offered at once, but the client is not behind
        sender.offer(f"k{n}", ("k", n), 10)
    await until(lambda: "k=99" in transport.updates())
    assert slow == []
    sender.close()
    await asyncio.wait_for(task, 1)


async def test_events_off_holds_the_latest_and_events_on_sends_it():
    transport = FakeTransport()
    sender, _ = make(transport)
    task = asyncio.create_task(sender.run())
    sender.pause()
    for n in range(50):
        sender.offer("a", ("a", n), 10)
    await asyncio.sleep(0.01)  # give a wrong sender every chance to send
    assert transport.updates() == []
    sender.resume()
    await until(lambda: transport.updates() == ["a=49"])
    sender.close()
    await asyncio.wait_for(task, 1)


async def test_a_discarded_update_is_never_sent():
    transport = FakeTransport()
    sender, _ = make(transport)
    sender.pause()
    sender.offer("gone", ("gone", 1), 10)
    sender.offer("kept", ("kept", 1), 10)
    sender.discard("gone")
    task = asyncio.create_task(sender.run())
    sender.resume()
    await until(lambda: transport.updates() == ["kept=1"])
    sender.close()
    await asyncio.wait_for(task, 1)


async def test_what_did_not_fit_goes_out_before_what_came_later():
    transport = FakeTransport()
    sender, _ = make(transport)
    transport.stop_reading()
    for key in "abcdefghijklmnopqrstuvwxyz":
        sender.offer(key, (key, 0), 40)
    task = asyncio.create_task(sender.run())
    await until(lambda: transport.get_write_buffer_size() > HIGH)
    assert sender.waiting > 0  # the rest went back, waiting for room
    sender.offer("z", ("z", 1), 40)  # an old key again, and a new one
    sender.offer("new", ("new", 1), 40)
    transport.resume_reading()
    await until(lambda: "new=1" in transport.updates())
    order = transport.updates()
    assert order.index("y=0") < order.index("z=1") < order.index("new=1")
    assert "z=0" not in order  # replaced before it was sent
    sender.close()
    await asyncio.wait_for(task, 1)


async def test_an_update_that_cannot_be_built_is_dropped_and_logged_once(caplog):
    def picky(item: tuple[str, int]) -> bytes:
        if item[0] == "bad":
            raise RuntimeError("cannot build")
        return build(item)

    transport = FakeTransport()
    sender, _ = make(transport, build=picky)
    task = asyncio.create_task(sender.run())
    with caplog.at_level(logging.ERROR):
        for n in range(5):
            sender.offer("bad", ("bad", n), 10)
            sender.offer("ok", ("ok", n), 10)
            await until(lambda n=n: f"ok={n}" in transport.updates())
    assert [r for r in caplog.records if "could not be built" in r.getMessage()][0].exc_info
    assert len([r for r in caplog.records if "could not be built" in r.getMessage()]) == 1
    assert sender.build_failures == 5
    sender.close()
    await asyncio.wait_for(task, 1)


async def test_a_lost_connection_ends_the_sender():
    transport = FakeTransport()
    sender, _ = make(transport)
    task = asyncio.create_task(sender.run())
    fill_buffer(sender, transport)
    await until(lambda: sender.behind_since is not None)
    transport.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(task, 5)


async def test_updates_caused_while_requests_are_carried_out_follow_the_reply():
    transport = FakeTransport()
    built: list[tuple[str, int]] = []

    def building(item: tuple[str, int]) -> bytes:
        built.append(item)
        return build(item)

    sender, _ = make(transport, chunk=1 << 16, build=building)
    task = asyncio.create_task(sender.run())
    sender.hold()  # the circuit is carrying out a put
    sender.offer("a", ("a", 1), 20)  # the update the put causes
    await turns()  # the sender's task had its chance: held, it sent nothing
    assert transport.sent == []
    sender.write_reply(b"reply;")
    assert transport.sent == [b"reply;"] and built == []  # the reply before any building
    sender.release()
    assert built == []  # not built in the turn of the reply
    await until(lambda: transport.sent == [b"reply;", build(("a", 1))])
    sender.close()
    await asyncio.wait_for(task, 1)


async def test_held_updates_with_no_reply_go_out_at_release():
    transport = FakeTransport()
    sender, _ = make(transport)
    task = asyncio.create_task(sender.run())
    sender.hold()  # a put without a reply (WriteRequest)
    sender.offer("a", ("a", 1), 20)
    sender.release()
    await until(lambda: transport.updates() == ["a=1"])
    sender.close()
    await asyncio.wait_for(task, 1)


async def test_a_reply_to_a_client_behind_carries_no_updates():
    transport = FakeTransport()
    sender, _ = make(transport)
    task = asyncio.create_task(sender.run())
    fill_buffer(sender, transport)
    await until(lambda: sender.behind_since is not None)
    sender.hold()
    sender.offer("a", ("a", 1), 20)
    sender.write_reply(b"reply;")
    sender.release()
    assert transport.buffer[-1] == b"reply;"  # the update keeps coalescing, for the sender
    assert sender.waiting >= 1
    transport.resume_reading()
    await until(lambda: "a=1" in transport.updates())
    sender.close()
    await asyncio.wait_for(task, 1)
