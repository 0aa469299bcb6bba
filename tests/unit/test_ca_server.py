"""The IOC's Channel Access server (``bgrscrpt_ioc.ca.server``) against real clients.

Clients are libca (pyepics, in a process of its own) and raw CA circuits
(``tests.unit.ca_raw``), which can do what libca does not: stop reading, reset
mid-stream, send garbage or a header that lies. The server runs in the test's
event loop, so the tests can look inside it.

Each test marked ``caproto_fix`` proves a change to caproto 1.3's asyncio server
and fails against caproto's plain Context: run this file with
``BGRSCRPT_STOCK_CAPROTO=1`` to see them fail.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import os
import resource
import socket
import struct
import threading
import time
import uuid
from typing import Any

import caproto as ca
import pytest
from caproto import ChannelType
from caproto.server import PVGroup, pvproperty

from bgrscrpt_ioc.ca.server import IocContext
from tests.unit.ca_raw import RawClient, ca_header, extended_header
from tests.unit.ca_server import ca_server, run_client, serving

BLOB_BYTES = 4000
STOPPED_SUBSCRIPTIONS = 200


class Served(PVGroup):
    """What the tests serve: a fast, large PV, a beat, and PVs to put to."""

    a = pvproperty(value=0.0, name="A")
    b = pvproperty(value=0.0, name="B")
    c = pvproperty(value=0.0, name="C")
    blob = pvproperty(value="", dtype=str, max_length=BLOB_BYTES, name="BLOB", read_only=True)
    beat = pvproperty(value=0, name="BEAT", read_only=True)
    text = pvproperty(value="0.1.0", dtype=ChannelType.STRING, name="TEXT")

    # caproto's pattern: a putter or startup hook takes its pvproperty's name (the
    # decorator returns the property), which mypy reads as a redefinition.
    @a.putter  # type: ignore[no-redef]
    async def a(self, instance, value):
        await self.b.write(value * 2)
        # Runs after the put's own updates have gone out: its update must too.
        self._task = asyncio.get_running_loop().create_task(self.c.write(value * 3))
        return value


def prefix() -> str:
    return f"US{uuid.uuid4().hex[:8]}:"


async def publish(group: Served, stop: asyncio.Event, blob_hz: float = 100, beat_hz: float = 20):
    """Change BLOB (4 kB) and count BEAT up, as a chatty IOC would."""
    n = 0
    next_beat = time.monotonic()
    while not stop.is_set():
        n += 1
        await group.blob.write(f"{n:08d}".ljust(BLOB_BYTES - 1, "x"))
        if time.monotonic() >= next_beat:
            await group.beat.write(group.beat.value + 1)
            next_beat += 1 / beat_hz
        await asyncio.sleep(1 / blob_hz)


class Watcher(threading.Thread):
    """A healthy raw client monitoring BEAT in a thread: (arrival, value) of each update."""

    def __init__(self, port: int, pvname: str) -> None:
        super().__init__(daemon=True)
        self.client = RawClient(port, name="watcher")
        chan = self.client.channel(pvname)
        self.client.send(chan.subscribe(data_type=ChannelType.LONG, subscriptionid=1))
        self.seen: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            for command in self.client.pump(0.2):
                if isinstance(command, ca.EventAddResponse):
                    self.seen.append((time.monotonic(), int(command.data[0])))

    def close(self) -> None:
        self.stop.set()
        self.join(5)
        self.client.close()

    def since(self, t0: float) -> list[tuple[float, int]]:
        return [s for s in list(self.seen) if s[0] >= t0]


def stopped_client(port: int, pvname: str, subscriptions: int = STOPPED_SUBSCRIPTIONS) -> RawClient:
    """A client holding many monitors of ``pvname`` that reads their first updates, then stops."""
    client = RawClient(port, name="stopped")
    chan = client.channel(pvname)
    for sid in range(subscriptions):
        client.send(chan.subscribe(data_type=ChannelType.CHAR, subscriptionid=sid))
    client.until(lambda: len({e.subscriptionid for e in client.events()}) == subscriptions, "all")
    return client  # and from now on, nobody reads its socket


def problems(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Log records that must never come from a client's doing: tracebacks and errors."""
    return [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.exc_info or r.levelno >= logging.ERROR
    ]


async def until(condition: Any, what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.02)


caproto_fix = pytest.mark.caproto_fix


# ---- flow control ---------------------------------------------------------------------


@caproto_fix
async def test_a_stopped_client_never_delays_another_clients_monitors(monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    group = Served(prefix())
    stop = asyncio.Event()
    async with ca_server(group.pvdb, monkeypatch) as served:
        publisher = asyncio.create_task(publish(group, stop))
        stopped = await asyncio.to_thread(stopped_client, served.port, group.blob.pvname)
        watcher = await asyncio.to_thread(Watcher, served.port, group.beat.pvname)
        watcher.start()
        try:
            t0 = time.monotonic()
            await asyncio.sleep(3.0)  # the stopped client's socket fills within milliseconds
            seen = watcher.since(t0)
            values = [v for _, v in seen]
            arrivals = [t for t, _ in seen]
            assert len(values) >= 20, values  # 20 Hz for 3 s: it kept getting them
            assert values == list(range(values[0], values[0] + len(values))), values
            assert max(b - a for a, b in zip([t0, *arrivals], arrivals, strict=False)) < 1.0
            # The stopped client costs at most one waiting update per subscription.
            (circuit,) = [c for c in served.context.circuits if c.client_username == "stopped-user"]
            assert circuit.sender.behind_since is not None  # it is behind, and stays connected
            assert circuit.sender.waiting <= STOPPED_SUBSCRIPTIONS
            assert not served.task.done()
        finally:
            stop.set()
            await publisher
            watcher.close()
            stopped.close()
    assert problems(caplog) == []


@caproto_fix
async def test_subscriptions_come_and_go_while_a_client_is_stopped(monkeypatch, caplog):
    """caproto 1.3 ended its server here ("deque mutated during iteration")."""
    caplog.set_level(logging.WARNING)
    group = Served(prefix())
    stop = asyncio.Event()
    async with ca_server(group.pvdb, monkeypatch) as served:
        publisher = asyncio.create_task(publish(group, stop))
        stopped = await asyncio.to_thread(stopped_client, served.port, group.blob.pvname)
        watcher = await asyncio.to_thread(Watcher, served.port, group.beat.pvname)
        watcher.start()
        try:
            await asyncio.sleep(0.5)  # let the stopped client fall behind

            def churn() -> None:
                client = RawClient(served.port, name="churn")
                ids = iter(range(10**6))  # unique on the circuit, as libca's
                try:
                    for round_ in range(30):
                        chan = client.channel(group.blob.pvname)
                        first = next(ids)
                        # The same PV and type as the stopped client's monitors.
                        for sid in (first, next(ids), next(ids)):
                            client.send(
                                chan.subscribe(data_type=ChannelType.CHAR, subscriptionid=sid)
                            )
                        client.send(chan.unsubscribe(first))
                        if round_ % 2:
                            client.send(chan.clear())

                            def cleared(chan: Any = chan) -> bool:
                                return bool(chan.states[ca.CLIENT] is ca.CLOSED)

                            client.until(cleared, "clear")
                        client.pump(0.01)
                finally:
                    client.close()

            await asyncio.to_thread(churn)
            # The stopped client resumes: it reads everything that waited for it.
            got = len(stopped.events())
            await asyncio.to_thread(
                stopped.until, lambda: len(stopped.events()) > got + 200, "more"
            )
            t0 = time.monotonic()
            await until(lambda: len(watcher.since(t0)) >= 5, "the watcher's beats")
            assert not served.task.done()
        finally:
            stop.set()
            await publisher
            watcher.close()
            stopped.close()
    assert problems(caplog) == []


@caproto_fix
@pytest.mark.parametrize(
    "bound,reason",
    [
        ({"EPICS_CAS_SLOW_CLIENT_TMO": "0.5"}, "behind for"),
        ({"EPICS_CAS_SLOW_CLIENT_MAX_BYTES": "100000"}, "bytes waiting"),
    ],
)
async def test_a_client_that_stays_behind_is_disconnected_with_one_line(
    monkeypatch, caplog, bound, reason
):
    caplog.set_level(logging.WARNING)
    for name, value in bound.items():
        monkeypatch.setenv(name, value)
    group = Served(prefix())
    stop = asyncio.Event()
    async with ca_server(group.pvdb, monkeypatch) as served:
        publisher = asyncio.create_task(publish(group, stop))
        stopped = await asyncio.to_thread(stopped_client, served.port, group.blob.pvname)
        address = stopped.sock.getsockname()
        try:
            await until(
                lambda: (
                    not any(c.client_username == "stopped-user" for c in served.context.circuits)
                ),
                "the server to drop the stopped client",
            )
            # Its socket is closed: what the kernel still held, then the end.
            await asyncio.to_thread(stopped.wait_closed)
            assert not served.task.done()
        finally:
            stop.set()
            await publisher
            stopped.close()
    lines = [r.getMessage() for r in caplog.records if "too slow" in r.getMessage()]
    assert len(lines) == 1, lines
    assert f"{address[0]}:{address[1]}" in lines[0]
    assert "stopped-host" in lines[0] and "stopped-user" in lines[0] and reason in lines[0]
    assert problems(caplog) == []


async def test_events_off_holds_the_latest_update_and_events_on_sends_it(monkeypatch):
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch) as served:

        def client() -> list[float]:
            c = RawClient(served.port)
            try:
                chan = c.channel(group.a.pvname)
                c.send(chan.subscribe(data_type=ChannelType.DOUBLE, subscriptionid=7))
                c.until(lambda: c.events(7), "the first update")
                c.send(ca.EventsOffRequest())
                for n in range(1, 11):
                    c.write(chan, float(n))
                c.read(chan)  # a round trip more: updates would have come by now
                held = len(c.events(7))
                c.send(ca.EventsOnRequest())
                c.until(lambda: c.events(7)[-1].data[0] == 10.0, "the latest value")
                c.read(chan)
                return [held, *[float(e.data[0]) for e in c.events(7)]]
            finally:
                c.close()

        held, *values = await asyncio.to_thread(client)
    assert held == 1  # nothing but the first update while events were off
    assert values == [0.0, 10.0]  # then only the latest


# ---- bounded input and quiet faults -----------------------------------------------------


@caproto_fix
async def test_a_header_claiming_too_much_closes_the_circuit_before_its_payload(
    monkeypatch, caplog
):
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("EPICS_CA_MAX_ARRAY_BYTES", "16384")
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch) as served:
        watcher = await asyncio.to_thread(Watcher, served.port, group.beat.pvname)
        watcher.start()
        stop = asyncio.Event()
        publisher = asyncio.create_task(publish(group, stop))

        def liar() -> tuple[int, float]:
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            sent = 0
            try:
                sock.sendall(ca_header(0, 0, 0, 13))  # VersionRequest
                sock.sendall(extended_header(19, 0xFFFFFFF0))  # a put of 4 GB
                chunk = b"\0" * 65536
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:  # keep sending until the server hangs up
                    try:
                        sock.sendall(chunk)
                    except OSError:
                        break
                    sent += len(chunk)
                return sent, deadline - time.monotonic()
            finally:
                sock.close()

        try:
            sent, time_left = await asyncio.to_thread(liar)
            assert time_left > 0, "the server kept taking the payload"
            # What the kernels' buffers take before the reset, not the 4 GB claimed.
            assert sent < 64 * 1024 * 1024
            t0 = time.monotonic()
            await until(lambda: len(watcher.since(t0)) >= 3, "the watcher's beats")
            assert len(served.context.circuits) == 1  # the watcher's only
        finally:
            stop.set()
            await publisher
            watcher.close()
    lines = [r.getMessage() for r in caplog.records if r.name == "bgrscrpt_ioc.ca"]
    assert len(lines) == 1 and "4294967304 bytes" in lines[0] and "16408" in lines[0], lines
    assert problems(caplog) == []


@caproto_fix
async def test_garbage_closes_the_circuit_with_one_line_per_host_and_minute(monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch) as served:

        def garbage(n: int) -> None:
            sock = socket.create_connection(("127.0.0.1", served.port), timeout=5)
            try:
                sock.sendall(f"GET /{n} HTTP/1.1\r\nHost: ioc\r\n\r\n".encode() * 4)
                sock.settimeout(5)
                while sock.recv(65536):  # until the server hangs up
                    pass
            except ConnectionResetError:
                pass
            finally:
                sock.close()

        for n in range(10):
            await asyncio.to_thread(garbage, n)
        reader = await asyncio.to_thread(RawClient, served.port)  # others are still served
        try:
            chan = await asyncio.to_thread(reader.channel, group.a.pvname)
            reply = await asyncio.to_thread(reader.read, chan)
            assert isinstance(reply, ca.ReadNotifyResponse)
        finally:
            reader.close()
        await until(lambda: len(served.context.circuits) == 0, "every circuit to end")
    lines = [r.getMessage() for r in caplog.records if r.name == "bgrscrpt_ioc.ca"]
    assert len(lines) == 1 and "not Channel Access" in lines[0], lines
    assert problems(caplog) == []


@caproto_fix
async def test_a_request_a_pv_cannot_answer_is_one_quiet_line(monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch) as served:

        def client() -> list[Any]:
            c = RawClient(served.port)
            try:
                chan = c.channel(group.text.pvname)  # "0.1.0": not a number
                replies = [c.read(chan, ChannelType.DOUBLE) for _ in range(5)]
                c.send(chan.subscribe(data_type=ChannelType.DOUBLE, subscriptionid=3))
                c.until(lambda: any(isinstance(m, ca.ErrorResponse) for m in c.received[-1:]), "")
                replies.append(c.read(chan, ChannelType.STRING))
                return replies
            finally:
                c.close()

        replies = await asyncio.to_thread(client)
        assert all(isinstance(r, ca.ErrorResponse) for r in replies[:5]), replies
        assert isinstance(replies[5], ca.ReadNotifyResponse)  # the circuit goes on
        # The failed subscription was not left behind: publishing still works.
        await group.text.write("1.2.3")
    lines = [r.getMessage() for r in caplog.records if r.name == "bgrscrpt_ioc.ca"]
    assert len(lines) == 1 and "refused" in lines[0] and "0.1.0" in lines[0], lines
    assert problems(caplog) == []


@caproto_fix
async def test_a_client_reset_mid_stream_leaves_nothing_behind(monkeypatch, caplog):
    """caproto 1.3's circuit could cancel and await itself here, with two tracebacks."""
    caplog.set_level(logging.WARNING)
    group = Served(prefix())
    stop = asyncio.Event()
    async with ca_server(group.pvdb, monkeypatch) as served:
        publisher = asyncio.create_task(publish(group, stop, blob_hz=200))

        def vanish(count: int) -> int:
            updates = 0
            for n in range(count):
                c = RawClient(served.port, name=f"gone{n}")
                chan = c.channel(group.blob.pvname)
                for sid in range(5):
                    c.send(chan.subscribe(data_type=ChannelType.CHAR, subscriptionid=sid))
                if n % 3:
                    updates += len(c.pump(0.05))
                c.close(reset=True)
            return updates

        try:
            updates = sum(await asyncio.gather(*(asyncio.to_thread(vanish, 40) for _ in range(4))))
            assert updates > 0
            await until(lambda: len(served.context.circuits) == 0, "every circuit to end")
            assert not served.task.done()
        finally:
            stop.set()
            await publisher
    assert problems(caplog) == []


@caproto_fix
async def test_circuits_run_without_nagle(monkeypatch):
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch) as served:
        client = await asyncio.to_thread(RawClient, served.port)
        try:
            await asyncio.to_thread(client.channel, group.a.pvname)
            (circuit,) = served.context.circuits
            sock = circuit.client.writer.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        finally:
            client.close()


# ---- requests: in order, in the reading task, without a task each ---------------------------


@caproto_fix
async def test_reads_puts_and_subscriptions_cost_no_task(monkeypatch):
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch) as served:
        client = await asyncio.to_thread(RawClient, served.port)
        loop = asyncio.get_running_loop()
        created: list[Any] = []

        def factory(loop, coro, context=None):  # type: ignore[no-untyped-def]
            created.append(getattr(coro, "__qualname__", coro))
            return asyncio.Task(coro, loop=loop, context=context)

        chan = await asyncio.to_thread(client.channel, group.b.pvname)
        await asyncio.to_thread(client.read, chan)  # the circuit and its tasks are up

        def work() -> None:
            for n in range(50):
                client.read(chan)
                client.write(chan, float(n))
                client.send(chan.subscribe(subscriptionid=n))
                client.send(chan.unsubscribe(n))

        try:
            loop.set_task_factory(factory)
            await asyncio.to_thread(work)
        finally:
            loop.set_task_factory(None)
            client.close()
    assert created == []


@caproto_fix
def test_a_request_is_carried_out_in_the_task_that_read_it(monkeypatch):
    """Two turns of the event loop per request: the socket's, then the reading task's.

    caproto queued each request for another task, and waited on a task of its own
    before each read: four to six turns.
    """
    turns = [0]

    class CountingLoop(asyncio.SelectorEventLoop):
        def _run_once(self) -> None:
            turns[0] += 1
            super()._run_once()  # type: ignore[misc]  # asyncio's, private: not in typeshed

    async def main() -> float:
        group = Served(prefix())
        async with ca_server(group.pvdb, monkeypatch) as served:
            client = await asyncio.to_thread(RawClient, served.port)
            try:
                chan = await asyncio.to_thread(client.channel, group.b.pvname)
                await asyncio.to_thread(client.read, chan)

                def work() -> None:
                    for n in range(100):
                        client.read(chan)
                        client.write(chan, float(n))

                turns[0] = 0
                await asyncio.to_thread(work)
                return turns[0] / 200
            finally:
                client.close()

    with asyncio.Runner(loop_factory=CountingLoop) as runner:
        per_request = runner.run(main())
    assert per_request < 3.0, per_request


CLIENT = r"""
import json, sys, time, epics
prefix = sys.argv[1]
seen = {k: [] for k in "ABC"}
pvs = {k: epics.PV(prefix + k, callback=lambda value, k=k, **kw: seen[k].append(value))
       for k in "ABC"}
for pv in pvs.values():
    assert pv.wait_for_connection(10), pv.pvname
deadline = time.monotonic() + 10
while time.monotonic() < deadline and not all(seen.values()):
    time.sleep(0.01)
out = {"put": epics.caput(prefix + "A", 1.5, wait=True, timeout=10)}
out["read_back"] = epics.caget(prefix + "A", use_monitor=False)
# A burst of puts without waiting: libca packs them into few TCP segments.
for i in range(200):
    epics.caput(prefix + "B", float(i), wait=False)
out["last_put_read"] = epics.caget(prefix + "B", use_monitor=False, timeout=10)
deadline = time.monotonic() + 10
while time.monotonic() < deadline and (
    4.5 not in seen["C"] or 3.0 not in seen["B"] or seen["B"][-1] != 199.0
):
    time.sleep(0.01)
out["seen"] = seen
print(json.dumps(out))
"""


async def test_every_update_of_a_put_arrives_and_commands_keep_their_order(monkeypatch):
    group = Served(prefix())
    async with serving(group.pvdb, monkeypatch) as (ca_env, server):
        result = await run_client(CLIENT, group.prefix, env=ca_env)
        assert not server.done()

    assert result["put"] == 1
    assert result["read_back"] == 1.5  # stored before the reply
    assert result["last_put_read"] == 199.0  # the burst was carried out in order
    seen = result["seen"]
    assert seen["A"] == [0.0, 1.5]
    assert seen["C"] == [0.0, 4.5]  # written by a task after the put: not lost
    # B: its initial value, the putter's write, then the burst in order; updates of
    # a fast series may be coalesced, never reordered.
    assert seen["B"][:2] == [0.0, 3.0]
    burst = seen["B"][2:]
    assert burst == sorted(burst) and burst[-1] == 199.0


async def test_a_put_is_answered_before_the_updates_it_causes(monkeypatch):
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch) as served:

        def client() -> list[str]:
            c = RawClient(served.port)
            try:
                chans = {name: c.channel(getattr(group, name).pvname) for name in "ab"}
                for sid, chan in enumerate(chans.values()):
                    c.send(chan.subscribe(data_type=ChannelType.DOUBLE, subscriptionid=sid))
                c.until(lambda: len(c.events()) == 2, "the first updates")
                start = len(c.received)
                c.write(chans["a"], 2.0)
                c.until(lambda: len(c.events()) == 4, "the put's updates")
                return [type(m).__name__ for m in c.received[start:]]
            finally:
                c.close()

        order = await asyncio.to_thread(client)
    assert order == ["WriteNotifyResponse", "EventAddResponse", "EventAddResponse"], order


@caproto_fix
async def test_one_cancellation_ends_the_server_and_every_circuit_while_updates_stream(
    monkeypatch,
):
    """Python 3.11's ``asyncio.wait_for`` can swallow a cancellation that arrives as its
    wait completes; caproto's circuit tasks used it, and one of them could then wait
    for ever (an IOC that never exits on SIGTERM)."""
    group = Served(prefix())
    stop = asyncio.Event()
    before = asyncio.all_tasks()
    async with ca_server(group.pvdb, monkeypatch) as served:
        publisher = asyncio.create_task(publish(group, stop, blob_hz=500, beat_hz=100))
        readers = []

        def reader() -> RawClient:
            client = RawClient(served.port)
            chan = client.channel(group.blob.pvname)
            for sid in range(3):
                client.send(chan.subscribe(data_type=ChannelType.CHAR, subscriptionid=sid))
            chan = client.channel(group.beat.pvname)
            client.send(chan.subscribe(subscriptionid=3))
            client.until(lambda: len(client.events()) >= 4, "updates")
            return client

        for _ in range(20):
            readers.append(await asyncio.to_thread(reader))
        pumping = threading.Event()

        def pump() -> None:  # the clients keep reading: updates are in flight
            while not pumping.is_set():
                for client in readers:
                    client.pump(0.001)

        pumper = threading.Thread(target=pump, daemon=True)
        pumper.start()
        await asyncio.sleep(0.5)
        served.task.cancel()  # once: what app.py's shutdown does first
        with contextlib.suppress(asyncio.CancelledError):
            await served.task
        try:
            left = set()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                left = {
                    t
                    for t in asyncio.all_tasks() - before
                    if t is not publisher and t is not asyncio.current_task() and not t.done()
                }
                if not left:
                    break
                await asyncio.sleep(0.05)
            assert not left, left
        finally:
            pumping.set()
            pumper.join(5)
            stop.set()
            await publisher
            for client in readers:
                client.close()


async def test_a_client_that_never_reads_its_replies_is_dropped_and_delays_nobody(
    monkeypatch, caplog
):
    """Its requests wait in its own socket (the circuit stops reading while a reply
    cannot go out), not in the IOC; past the bound it is disconnected."""
    caplog.set_level(logging.WARNING)
    monkeypatch.setenv("EPICS_CAS_SLOW_CLIENT_TMO", "0.5")
    group = Served(prefix())
    stop = asyncio.Event()
    async with ca_server(group.pvdb, monkeypatch) as served:
        publisher = asyncio.create_task(publish(group, stop))
        watcher = await asyncio.to_thread(Watcher, served.port, group.beat.pvname)
        watcher.start()

        def greedy() -> RawClient:
            client = RawClient(served.port, name="greedy")
            chan = client.channel(group.blob.pvname)
            sent = 0
            client.sock.settimeout(10)
            try:
                while sent < 200_000:  # 4 kB replies: 800 MB if nothing stopped it
                    batch = [chan.read(ioid=client.next_ioid()) for _ in range(500)]
                    client.send(*batch)
                    sent += len(batch)
            except OSError:  # the IOC hung up (or stopped reading for 10 s)
                pass
            return client  # still open, and still not reading

        client = None
        try:
            t0 = time.monotonic()
            client = await asyncio.to_thread(greedy)
            await until(lambda: len(served.context.circuits) == 1, "the greedy client's end")
            assert len(watcher.since(t0)) >= 5
        finally:
            if client is not None:
                client.close()
            stop.set()
            await publisher
            watcher.close()
    lines = [r.getMessage() for r in caplog.records if "too slow" in r.getMessage()]
    assert len(lines) == 1 and "greedy-user" in lines[0], lines
    assert problems(caplog) == []


# ---- accepting connections -------------------------------------------------------------


@caproto_fix
async def test_running_out_of_descriptors_is_one_line_and_accepting_resumes(monkeypatch, caplog):
    """asyncio logged a traceback for each failed accept() (up to 100 a turn of the loop,
    each scheduling as many retries): thousands a second while descriptors ran out."""
    caplog.set_level(logging.WARNING)
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch) as served:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        in_use = len(os.listdir("/proc/self/fd"))
        waiting: list[socket.socket] = []
        try:
            # Each connection costs this process two descriptors (both ends): the
            # server can accept none once the clients' ends are made.
            resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 20, hard))
            for _ in range(20):
                with contextlib.suppress(OSError):
                    waiting.append(socket.create_connection(("127.0.0.1", served.port)))
            assert len(waiting) >= 10
            await until(
                lambda: any("cannot accept CA clients" in r.getMessage() for r in caplog.records),
                "the server to find it cannot accept",
            )
            # Long enough for many retries; a condition cannot say that none happened.
            await asyncio.sleep(1.5)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        try:
            await until(lambda: len(served.context.circuits) == len(waiting), "every connection")
        finally:
            for sock in waiting:
                sock.close()
        await until(lambda: not served.context.circuits, "the circuits to end")
    lines = [r.getMessage() for r in caplog.records]
    assert [line for line in lines if "accept" in line] == [
        next(line for line in lines if "cannot accept CA clients" in line)
    ], lines[:20]
    assert problems(caplog) == []


async def test_connections_past_the_bound_are_closed_at_once_with_one_line(monkeypatch, caplog):
    caplog.set_level(logging.WARNING)
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch) as served:
        served.context.limits = dataclasses.replace(served.context.limits, max_clients=3)
        await until(lambda: served.context.open_connections == 0, "the probe's end")
        held = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(3)]
        try:
            await until(lambda: len(served.context.circuits) == 3, "three circuits")
            refused = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(5)]
            for sock in refused:  # closed by the server: end of file, no descriptor kept
                sock.settimeout(5)
                assert await asyncio.to_thread(sock.recv, 1) == b""
                sock.close()
            assert served.context.open_connections == 3
        finally:
            for sock in held:
                sock.close()
        await until(lambda: served.context.open_connections == 0, "the connections to end")
        client = await asyncio.to_thread(RawClient, served.port)  # room again
        try:
            await asyncio.to_thread(client.channel, group.a.pvname)
        finally:
            client.close()
    lines = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert len(lines) == 1 and "3 clients connected" in lines[0], lines
    assert problems(caplog) == []


async def test_a_dbr_type_that_does_not_exist_is_refused_as_base_refuses_it(monkeypatch, caplog):
    """EPICS base answers ECA_BADTYPE; a subscription for DBR type 39 and up logged a
    traceback per request (``ValueError: 39 is not a valid ChannelType``)."""
    caplog.set_level(logging.WARNING)
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch, context_class=IocContext) as served:

        def client() -> list[Any]:
            c = RawClient(served.port)
            try:
                chan = c.channel(group.beat.pvname)
                for n, data_type in enumerate((39, 40, 99, 0xFFFF)):
                    event_add = ca_header(1, 16, data_type, 1) + bytes(12) + b"\0\x01\0\0"
                    read = ca_header(15, 0, data_type, 1)
                    c.send_bytes(
                        _ids(event_add, chan.sid, 1000 + n) + _ids(read, chan.sid, 2000 + n)
                    )
                c.until(
                    lambda: len([m for m in c.received if isinstance(m, ca.ErrorResponse)]) == 8,
                    "eight refusals",
                )
                assert not c.events()
                assert isinstance(c.read(chan), ca.ReadNotifyResponse)  # the circuit goes on
                return [m for m in c.received if isinstance(m, ca.ErrorResponse)]
            finally:
                c.close()

        refusals = await asyncio.to_thread(client)
        assert {r.status for r in refusals} == {ca.CAStatus.ECA_BADTYPE.value}, refusals
    lines = [r.getMessage() for r in caplog.records if r.name == "bgrscrpt_ioc.ca"]
    assert len(lines) == 1 and "DBR type 39" in lines[0], lines
    assert problems(caplog) == []


def _ids(header: bytes, sid: int, second: int) -> bytes:
    """``header`` (and what follows it) with its two id fields set."""
    return header[:8] + struct.pack(">II", sid, second) + header[16:]


FIREHOSE = r"""
import sys, threading, time
from tests.unit.ca_raw import RawClient
import caproto as ca
port, name, seconds, kind = int(sys.argv[1]), sys.argv[2], float(sys.argv[3]), sys.argv[4]
client = RawClient(port, name="firehose")
chan = client.channel(name)
if kind == "read":
    batch = b"".join(client.circuit.send(*[chan.read(ioid=i) for i in range(1000)]))
else:
    batch = b"".join(client.circuit.send(*[ca.EchoRequest() for i in range(4000)]))
def drain():
    while True:
        try:
            if not client.sock.recv(1 << 20):
                return
        except OSError:
            return
threading.Thread(target=drain, daemon=True).start()
client.sock.settimeout(None)
deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    client.sock.sendall(batch)
print("{}")
"""


@pytest.mark.parametrize("kind", ["read", "echo"])
async def test_a_client_streaming_requests_never_holds_the_event_loop(monkeypatch, kind):
    """A request whose reply the client takes at once never made the reading task
    wait, and a read of data already received neither: a client that streamed reads
    (each answered with 4 kB) kept the loop for itself, holding every timer of the
    IOC (its heartbeat, the scripts' supervision) for seconds. Echoes, each cheap,
    did the same."""
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch) as served:
        await group.blob.write("x" * (BLOB_BYTES - 1))
        ticks: list[float] = []

        async def ticker() -> None:
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.05)

        ticking = asyncio.create_task(ticker())
        try:
            await run_client(
                FIREHOSE, str(served.port), group.blob.pvname, "3", kind, env=served.env
            )
        finally:
            ticking.cancel()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    assert max(gaps) < 1.0, sorted(gaps)[-5:]


CHANNEL_BOUND = 50


@caproto_fix
async def test_channels_to_names_not_served_are_not_kept(monkeypatch):
    """CREATE_CHAN for names the IOC does not serve, as a misconfigured or hostile client
    sends them: each is refused, and nothing of it stays on the server (caproto kept
    every refused channel for the life of the circuit)."""
    group = Served(prefix())
    refused_all, counted = threading.Event(), threading.Event()
    async with ca_server(group.pvdb, monkeypatch) as served:

        def creates() -> None:
            client = RawClient(served.port, name="lost")
            try:
                channels = [
                    ca.ClientChannel(f"{group.prefix}NOSUCH{i}", client.circuit) for i in range(500)
                ]
                client.send(*(chan.create() for chan in channels))
                client.until(
                    lambda: (
                        sum(isinstance(c, ca.CreateChFailResponse) for c in client.received)
                        == len(channels)
                    ),
                    "every channel refused",
                )
                assert client.channel(group.blob.pvname).states[ca.CLIENT] is ca.CONNECTED
                refused_all.set()
                counted.wait(10)
            finally:
                client.close()

        done = asyncio.create_task(asyncio.to_thread(creates))
        assert await asyncio.to_thread(refused_all.wait, 10)
        kept = [len(c.circuit.channels) for c in served.context.circuits]
        counted.set()
        await done
    assert kept == [1], kept  # the one channel it holds


async def test_one_client_holds_at_most_its_bound_of_channels_and_monitors(monkeypatch, caplog):
    """One client asking for ever more channels, then monitors: past the bound each is
    refused as EPICS clients expect (CREATE_CH_FAIL, as for a name not served; a
    monitor with ECA_ALLOCMEM), in one log line; what it holds keeps working, and a
    cleared channel makes room for another. Without a bound, 50,000 monitored channels
    of one client grew the IOC by 190 MB, and nothing stopped it going on."""
    monkeypatch.setenv("EPICS_CAS_MAX_CHANNELS", str(CHANNEL_BOUND))
    monkeypatch.setenv("EPICS_CAS_MAX_MONITORS", str(CHANNEL_BOUND))
    caplog.set_level(logging.WARNING)
    group = Served(prefix())
    async with ca_server(group.pvdb, monkeypatch) as served:

        def greedy() -> None:
            client = RawClient(served.port, name="greedy")
            try:
                channels = [
                    ca.ClientChannel(group.blob.pvname, client.circuit)
                    for _ in range(CHANNEL_BOUND + 10)
                ]
                client.send(*(chan.create() for chan in channels))
                failed = client.until(
                    lambda: [c for c in client.received if isinstance(c, ca.CreateChFailResponse)]
                    if sum(1 for c in client.received
                           if isinstance(c, ca.CreateChanResponse | ca.CreateChFailResponse))
                    == len(channels) else None,
                    "an answer to every channel",
                )  # fmt: skip
                assert len(failed) == 10
                held = [c for c in channels if c.states[ca.CLIENT] is ca.CONNECTED]
                assert len(held) == CHANNEL_BOUND
                # A monitor on each channel it holds, then one more on the first.
                client.send(*(chan.subscribe(data_type=ChannelType.CHAR) for chan in held))
                client.send(held[0].subscribe(data_type=ChannelType.CHAR))
                refused = client.until(
                    lambda: [c for c in client.received if isinstance(c, ca.ErrorResponse)],
                    "the monitor past the bound refused",
                )
                assert [c.status.name for c in refused] == ["ECA_ALLOCMEM"]
                client.until(lambda: len(client.events()) >= CHANNEL_BOUND, "every held monitor")
                # What it holds still works; a channel cleared makes room for one more.
                assert client.read(held[1], ChannelType.CHAR).data is not None
                client.send(held[-1].clear())
                client.until(lambda: held[-1].states[ca.CLIENT] is ca.CLOSED, "the channel cleared")
                assert client.channel(group.blob.pvname).states[ca.CLIENT] is ca.CONNECTED
            finally:
                client.close()

        await asyncio.to_thread(greedy)
    lines = [r.getMessage() for r in caplog.records if "the most one client may" in r.getMessage()]
    assert len(lines) == 2, lines  # one line for channels, one for monitors
    assert problems(caplog) == []
