"""caproto's CA clients with this project's fixes (bgrscrpt_ioc.ca.client and
.threading_client), against a caproto server behind a relay that can cut the link,
refuse circuits or reset them (tests/ca_relay.py).

Each test states a behaviour any CA client should have, so it can be offered
upstream. ``BGRSCRPT_STOCK_CAPROTO=1`` runs the same tests on caproto's own
classes: every one fails but the watch monitor's (which needs the fixed
context) and the threading client's reconnection after an unresponsive server
(which caproto's threading client gets right).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import caproto
import pytest
from caproto import ChannelType
from caproto.asyncio import client as stock_asyncio
from caproto.asyncio.server import start_server
from caproto.client import common
from caproto.client.search_results import SearchResults as StockSearchResults
from caproto.server import PVGroup, pvproperty
from caproto.threading import client as stock_threading

from bgrscrpt_ioc.ca import client as fixed_asyncio
from bgrscrpt_ioc.ca import threading_client as fixed_threading
from bgrscrpt_ioc.recovery.monitor import PvMonitor, PvUpdate
from devsupport.ports import free_ca_port
from tests.ca_relay import CaRelay

STOCK = os.environ.get("BGRSCRPT_STOCK_CAPROTO") == "1"
AsyncContext: Any = stock_asyncio.Context if STOCK else fixed_asyncio.Context
ThreadingContext: Any = stock_threading.Context if STOCK else fixed_threading.Context
SearchResults: Any = StockSearchResults if STOCK else fixed_asyncio.SearchResults

CONN_TMO = 1.0  # EPICS_CA_CONN_TMO for the clients: an outage is noticed in about 3 s


class Device(PVGroup):
    value = pvproperty(value=1.0, name="VALUE")
    refuse = pvproperty(value=0, name="REFUSE")

    # caproto's pattern: a putter or startup hook takes its pvproperty's name (the
    # decorator returns the property), which mypy reads as a redefinition.
    @refuse.putter  # type: ignore[no-redef]
    async def refuse(self, instance: Any, value: Any) -> Any:
        raise ValueError("refused by the device")


class Server:
    """A caproto server for one Device, on an event loop in a thread of its own."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.prefix = f"CC{uuid.uuid4().hex[:8]}:"
        self.port = free_ca_port()
        self.group = Device(self.prefix)
        self._beacons = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._beacons.bind(("127.0.0.1", 0))
        env = {
            "EPICS_CA_SERVER_PORT": str(self.port),
            "EPICS_CAS_SERVER_PORT": str(self.port),
            "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
            "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
            "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
            "EPICS_CAS_BEACON_PORT": str(self._beacons.getsockname()[1]),
        }
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._task: asyncio.Task[None] | None = None
        self._serving = asyncio.run_coroutine_threadsafe(self._serve(), self._loop)
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                break
            if self._serving.done():
                self._serving.result()  # raises what stopped it
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.02)

    @property
    def name(self) -> str:
        return f"{self.prefix}VALUE"

    def write(self, value: float) -> None:
        asyncio.run_coroutine_threadsafe(self.group.value.write(value), self._loop).result(5)

    async def _serve(self) -> None:
        self._task = asyncio.current_task()
        await start_server(self.group.pvdb, interfaces=["127.0.0.1"])

    async def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
        self._beacons.close()


@pytest.fixture
def link(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Server, CaRelay]]:
    """A server, and a relay to it that the clients made in the test search through."""
    server = Server(monkeypatch)
    relay = CaRelay(server.port).start()
    monkeypatch.setenv("EPICS_CA_ADDR_LIST", f"127.0.0.1:{relay.port}")
    monkeypatch.setenv("EPICS_CA_AUTO_ADDR_LIST", "NO")
    monkeypatch.setenv("EPICS_CA_CONN_TMO", str(CONN_TMO))
    # caproto's echo timeout and beacon margin (5 s, 1 s) are read when it is
    # imported; shorter ones keep each outage to a few seconds.
    monkeypatch.setattr(caproto._constants, "RESPONSIVENESS_TIMEOUT", 1.0)
    monkeypatch.setattr(stock_threading, "RESPONSIVENESS_TIMEOUT", 1.0)
    monkeypatch.setattr(common, "BEACON_MARGIN", 0.5)
    try:
        yield server, relay
    finally:
        relay.close()
        server.close()


class Events:
    """What a PV's callbacks saw, for the asyncio client (coroutine methods: caproto
    holds callbacks by weak reference and runs plain functions in a thread pool)."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.values: list[float] = []
        self._news = asyncio.Event()

    async def on_state(self, pv: Any, state: str) -> None:
        self.states.append(state)
        self._news.set()

    async def on_value(self, sub: Any, response: Any) -> None:
        self.values.append(float(response.data[0]))
        self._news.set()

    async def wait(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        async def until() -> None:
            while not condition():
                self._news.clear()
                await self._news.wait()

        try:
            async with asyncio.timeout(timeout):
                await until()
        except TimeoutError:
            raise AssertionError(f"no {what} within {timeout:g} s: {vars(self)}") from None


@contextlib.asynccontextmanager
async def subscribed(name: str, events: Events) -> Any:
    """A context (the one under test) with ``name`` subscribed; yields its PV."""
    ctx = AsyncContext(timeout=None)
    (pv,) = await ctx.get_pvs(name, connection_state_callback=events.on_state, timeout=None)
    sub = pv.subscribe(data_type="time")
    sub.add_callback(events.on_value)
    try:
        yield pv
    finally:
        await sub.clear()  # before the callbacks' owner goes (caproto would not await it)
        await ctx.disconnect()


def wait_until(condition: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {timeout:g} s"
        time.sleep(0.05)


# ---- the asyncio client ------------------------------------------------------------


async def test_a_pv_of_an_unresponsive_server_is_reported_disconnected_and_reconnects(link):
    server, relay = link
    events = Events()
    async with subscribed(server.name, events) as pv:
        await events.wait(lambda: events.values == [1.0], 10, "first value")
        relay.cut()  # the server's host drops off the network: not a byte either way
        await events.wait(lambda: "disconnected" in events.states, 10, "disconnection")
        assert not pv.connected
        relay.restore()
        server.write(2.0)
        await events.wait(lambda: events.values[-1:] == [2.0], 15, "value after the outage")
        assert events.states[-2:] == ["disconnected", "connected"]


async def test_a_refused_circuit_is_retried_until_the_server_accepts(link):
    server, relay = link
    relay.circuits("refuse")  # searches are answered, connections refused
    events = Events()
    async with subscribed(server.name, events):
        await asyncio.sleep(1.0)
        assert not events.values
        relay.circuits("forward")
        await events.wait(lambda: events.values == [1.0], 15, "value once the server accepts")


async def test_a_server_that_resets_every_circuit_is_retried_with_a_growing_delay(link):
    server, relay = link
    relay.circuits("reset")  # searches are answered, every circuit reset at once
    events = Events()
    async with subscribed(server.name, events):
        await asyncio.sleep(3.0)
        # Retried 0.25, 0.5, 1, 2 s after each failure: 4 to 5 circuits in 3 s.
        assert 2 <= relay.accepted <= 8, relay.accepted
        relay.circuits("forward")
        await events.wait(lambda: events.values == [1.0], 15, "value once circuits are kept")


async def test_a_server_that_drops_every_circuit_does_not_make_the_client_spin(link):
    server, relay = link
    relay.circuits("drop")  # every circuit is reset right after its handshake
    events = Events()
    async with subscribed(server.name, events):
        await asyncio.sleep(3.0)
        assert 2 <= relay.accepted <= 8, relay.accepted  # caproto's: one per search round trip
        relay.circuits("forward")
        await events.wait(lambda: events.values[-1:] == [1.0], 15, "value once circuits are kept")


async def test_a_lost_circuit_leaves_no_task_behind(link):
    server, relay = link
    events = Events()
    async with subscribed(server.name, events) as pv:
        await events.wait(lambda: events.values == [1.0], 10, "first value")
        old = pv.circuit_manager
        relay.restore(reset=True)  # the server resets the circuit
        server.write(3.0)
        await events.wait(lambda: events.values[-1:] == [3.0], 15, "value on the new circuit")
        assert pv.circuit_manager is not old
        left = [t for t in asyncio.all_tasks() if _owner(t) in (old, old.user_callback_executor)]
        assert not left


async def test_a_server_restarted_again_and_again_is_found_again_at_once_each_time(link):
    """Circuits that served and then ended young, six times in a row (an IOC that alarm
    recovery restarts every few seconds): each time the PV is back within a second,
    not after a delay that grew with each restart (the fifth took 5 s)."""
    server, relay = link
    events = Events()
    async with subscribed(server.name, events):
        await events.wait(lambda: events.values == [1.0], 10, "first value")
        for n in range(2, 8):
            relay.restore(reset=True)  # the server "restarts": its circuits reset
            server.write(float(n))
            started = time.monotonic()
            await events.wait(lambda n=n: events.values[-1:] == [float(n)], 15, f"value {n}")
            assert time.monotonic() - started < 1.0, (n, time.monotonic() - started)


async def test_a_name_no_search_carries_is_refused_and_harms_nothing(link):
    # caproto's task that resends searches died on it: no later PV connected.
    server, _relay = link
    ctx = AsyncContext()
    try:
        with pytest.raises(ValueError):
            await ctx.get_pvs("X" * 60)
        (pv,) = await ctx.get_pvs(server.name)
        await pv.wait_for_connection(timeout=10)
    finally:
        await ctx.disconnect()


async def test_a_put_the_server_refuses_is_answered_at_once(link):
    # caproto's asyncio client ignored the server's error reply to a put: a put
    # with wait=True waited out its whole timeout and raised a timeout, where
    # libca calls back at once with the server's error. A watch's restart put
    # refused by its peer must say why, not "did not answer".
    server, _relay = link
    ctx = AsyncContext(timeout=None)
    try:
        (pv,) = await ctx.get_pvs(server.prefix + "REFUSE", timeout=None)
        await pv.wait_for_connection(timeout=10)
        response = await pv.write([1], wait=True, timeout=20)
        assert isinstance(response, caproto.ErrorResponse)
        assert response.status.name == "ECA_PUTFAIL"
        assert "refused by the device" in (fixed_asyncio.refusal(response) or "")
        assert (await pv.read(timeout=10)).data[0] == 0
        assert fixed_asyncio.refusal(await pv.write([0], wait=True, timeout=10)) is not None
    finally:
        await ctx.disconnect()


async def test_closing_a_context_ends_when_a_search_task_loses_its_cancellation():
    """Python 3.11's wait_for swallows a cancellation that arrives as its wait ends:
    a broadcaster task that did so made caproto's disconnect() wait for ever."""
    ctx = AsyncContext(timeout=None)

    async def loses_one_cancellation() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # as wait_for may
            await asyncio.sleep(3600)
        await asyncio.sleep(3600)

    ctx.broadcaster._tasks.create(loses_one_cancellation())
    await asyncio.sleep(0)
    await asyncio.wait_for(ctx.disconnect(), 10)  # caproto's never returns


def _owner(task: asyncio.Task) -> Any:
    frame = getattr(task.get_coro(), "cr_frame", None)
    return None if frame is None else frame.f_locals.get("self")


def test_a_cancelled_search_is_no_longer_sent():
    results = SearchResults()
    results.search("A", "B", results_queue=None, retirement_deadline=time.monotonic() + 60)
    results.cancel("A")
    assert sorted(item.name for item in results.unanswered_searches.values()) == ["B"]


def test_forgetting_where_a_name_was_found_twice_is_harmless():
    results = SearchResults()
    results.mark_name_found("A", ("127.0.0.1", 5064))
    results.invalidate_by_name("A")
    results.invalidate_by_name("A")  # caproto's raises KeyError
    assert "A" not in results


def test_a_name_with_an_open_channel_can_be_searched_for_again():
    """caproto subtracted its marker for an open channel from the time (TypeError), so
    any search for a name whose channel is open failed: a watched PV that connected
    but stayed silent could never be re-created (a traceback at each attempt)."""
    results = SearchResults()
    address = ("127.0.0.1", 5064)
    results.mark_channel_created("A", address)
    assert results.get_cached_search_result("A") == address
    cached, to_search = results.split_cached_results(["A", "B"])
    assert dict(cached) == {address: ["A"]} and to_search == ["B"]


async def test_a_pv_whose_channel_is_open_is_recreated_and_connects_again(link):
    server, _ = link
    ctx = fixed_asyncio.Context(timeout=None)
    try:
        (pv,) = await ctx.get_pvs(server.name)
        await pv.wait_for_connection(timeout=10)
        new = await ctx.recreate(pv)  # its channel still open, as a silent server leaves it
        await new.wait_for_connection(timeout=10)
        assert new is not pv
        assert (await new.read(timeout=10)).data[0] == 1.0
    finally:
        await ctx.disconnect()


# ---- the watches' monitor on top of it -------------------------------------------------


async def test_a_watched_pv_silent_longer_than_the_connection_timeout_is_recreated(link):
    server, relay = link
    relay.cut()  # nothing answers its searches
    updates: list[PvUpdate] = []
    ctx = fixed_asyncio.Context(timeout=None)
    monitor = PvMonitor(ctx, updates.append)
    assert monitor.silent_after == CONN_TMO
    await monitor.add([server.name])
    deadline = time.monotonic() + 10
    while monitor.recreated < 2:
        assert time.monotonic() < deadline, "the silent PV was not re-created"
        await asyncio.sleep(0.1)
    # Each re-creation replaced the old search: one goes out, not one per attempt.
    searching = [s.name for s in ctx.broadcaster.results.unanswered_searches.values()]
    assert searching == [server.name]
    assert not updates  # never connected: nothing to report

    relay.restore()
    deadline = time.monotonic() + 10
    while not (updates and updates[-1].connected):
        assert time.monotonic() < deadline, "the re-created PV did not connect"
        await asyncio.sleep(0.05)
    assert updates == [PvUpdate(server.name, True, 0, 1.0, updates[-1].timestamp)]
    await monitor.close()
    await ctx.disconnect()


class Reasons:
    """What a monitor said about a PV that is not connected: its updates and reasons."""

    def __init__(self) -> None:
        self.updates: list[PvUpdate] = []
        self.reasons: list[str] = []

    def on_reason(self, name: str, reason: str) -> None:
        self.reasons.append(reason)

    async def wait(self, condition: Callable[[], Any], what: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"no {what}: {vars(self)}"
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def watched(name: str) -> Any:
    """A monitor of ``name`` on a context under test, connected; yields (what it said, context)."""
    said = Reasons()
    ctx = fixed_asyncio.Context(timeout=None)
    monitor = PvMonitor(ctx, said.updates.append, on_reason=said.on_reason)
    try:
        await monitor.add([name])
        await said.wait(lambda: said.updates and said.updates[-1].connected, "connection")
        yield said, ctx
    finally:
        await monitor.close()
        await ctx.disconnect()


async def test_a_watched_pv_that_disconnects_says_why(link):
    # caproto keeps no reason for a lost circuit: a watch could only say
    # "disconnected". The monitor's update carries it, and later news too.
    server, relay = link
    async with watched(server.name) as (said, _):
        relay.cut()  # not a byte either way: after the echo, "unresponsive"
        await said.wait(lambda: not said.updates[-1].connected, "disconnection")
        unresponsive = f"unresponsive server at 127.0.0.1:{relay.port}"
        assert said.updates[-1].reason.startswith(unresponsive), said.updates[-1]
        # Re-created, and searched for in vain: the first cause is kept.
        await said.wait(lambda: said.reasons, "a later reason")
        assert said.reasons[-1].startswith(unresponsive), said.reasons
        assert said.reasons[-1].endswith("; no server answers its search since"), said.reasons


async def test_a_loss_is_forgotten_once_the_pv_connects_again(link):
    # Kept while the PV searches again; once connected, a later search (a PV
    # re-created while silent) must not report that old loss as its cause.
    server, relay = link
    async with watched(server.name) as (said, ctx):
        relay.cut()
        await said.wait(lambda: not said.updates[-1].connected, "disconnection")
        await said.wait(lambda: any(name == server.name for name, _ in ctx.losses), "a loss")
        relay.restore()
        await said.wait(lambda: said.updates[-1].connected, "reconnection")
        assert not any(name == server.name for name, _ in ctx.losses), ctx.losses


async def test_a_watched_pv_whose_server_refuses_the_circuit_says_so(link):
    server, relay = link
    relay.circuits("refuse")  # searches are answered, connections refused
    said = Reasons()
    ctx = fixed_asyncio.Context(timeout=None)
    monitor = PvMonitor(ctx, said.updates.append, on_reason=said.on_reason)
    try:
        await monitor.add([server.name])
        refused = f"cannot connect to 127.0.0.1:{relay.port}: connection refused"
        await said.wait(lambda: refused in said.reasons, "the refusal")
        assert not said.updates  # never connected: no update, only the reason
    finally:
        await monitor.close()
        await ctx.disconnect()


# ---- the threading client --------------------------------------------------------------


def test_threading_a_refused_circuit_leaves_the_context_able_to_connect(link):
    server, relay = link
    relay.circuits("refuse")
    ctx = ThreadingContext()
    try:
        (pv,) = ctx.get_pvs(server.name)
        time.sleep(1.0)
        assert not pv.connected
        relay.circuits("forward")
        pv.wait_for_connection(timeout=15)
        assert pv.read(data_type=ChannelType.DOUBLE).data[0] == 1.0
    finally:
        ctx.disconnect(wait=False)


@pytest.mark.parametrize("mode", ["reset", "drop"])
def test_threading_a_server_that_drops_every_circuit_is_retried_with_a_growing_delay(link, mode):
    server, relay = link
    relay.circuits(mode)
    ctx = ThreadingContext()
    try:
        (pv,) = ctx.get_pvs(server.name)
        time.sleep(3.0)
        assert 2 <= relay.accepted <= 8, relay.accepted
        relay.circuits("forward")
        pv.wait_for_connection(timeout=15)
    finally:
        ctx.disconnect(wait=False)


def test_threading_a_pv_of_an_unresponsive_server_reconnects(link):
    """caproto's threading client gets this right: the fixes must not break it."""
    server, relay = link
    ctx = ThreadingContext()
    states: list[str] = []
    values: list[float] = []

    def on_state(pv: Any, state: str) -> None:
        states.append(state)

    def on_value(sub: Any, response: Any) -> None:
        values.append(float(response.data[0]))

    try:
        (pv,) = ctx.get_pvs(server.name, connection_state_callback=on_state)
        pv.subscribe(data_type="time").add_callback(on_value)
        wait_until(lambda: values == [1.0], 10, "first value")
        relay.cut()
        wait_until(lambda: "disconnected" in states, 10, "disconnection")
        relay.restore()
        server.write(4.0)
        wait_until(lambda: values[-1:] == [4.0], 15, "value after the outage")
    finally:
        ctx.disconnect(wait=False)


def test_threading_a_reset_circuit_is_not_handed_old_data(link, caplog):
    server, relay = link
    ctx = ThreadingContext()
    values: list[float] = []

    def on_value(sub: Any, response: Any) -> None:
        values.append(float(response.data[0]))

    try:
        (pv,) = ctx.get_pvs(server.name)
        pv.subscribe(data_type="time").add_callback(on_value)
        wait_until(lambda: values == [1.0], 10, "first value")
        server.write(5.0)
        wait_until(lambda: values[-1:] == [5.0], 10, "an update")
        relay.restore(reset=True)  # the server resets the circuit
        server.write(6.0)
        wait_until(lambda: values[-1:] == [6.0], 15, "value on the new circuit")
    finally:
        ctx.disconnect(wait=False)
    # caproto's selector hands the dead circuit the update before the reset again.
    assert values.count(5.0) == 1, values
    assert not [r for r in caplog.records if "Invalid command" in r.getMessage()]


@pytest.mark.parametrize(
    "bad", [None, 123, b"NAME", "", "a\0b", "x" * 60, "x.F" + "F" * 1005, "é" * 504]
)
def test_threading_a_name_channel_access_cannot_carry_is_refused_and_harms_nothing(link, bad):
    # caproto queued it for its search thread, which died encoding it: no later
    # PV of the context connected. libca refuses such names when asked.
    server, _relay = link
    ctx = ThreadingContext()
    try:
        with pytest.raises((TypeError, ValueError)):
            ctx.get_pvs(bad)
        (pv,) = ctx.get_pvs(server.name)
        pv.wait_for_connection(timeout=10)
    finally:
        ctx.disconnect(wait=False)


def test_threading_the_longest_names_a_search_carries_are_searched(link):
    server, _relay = link
    ctx = ThreadingContext()
    try:
        far = ctx.get_pvs("x" * 59, "x" * 59 + "." + "F" * 947)  # 1007 bytes in all
        (pv,) = ctx.get_pvs(server.name)
        pv.wait_for_connection(timeout=10)
        assert not any(p.connected for p in far)
    finally:
        ctx.disconnect(wait=False)


def test_threading_a_put_the_server_refuses_is_answered_at_once(link):
    # caproto's threading client ignored the server's error reply: a put with
    # wait=True waited for its whole timeout (for ever, as genie_python waits),
    # where libca calls back at once with the error.
    server, _relay = link
    ctx = ThreadingContext()
    try:
        (pv,) = ctx.get_pvs(server.prefix + "REFUSE")
        pv.wait_for_connection(timeout=10)
        response = pv.write([1], wait=True, timeout=20)
        assert isinstance(response, caproto.ErrorResponse)
        assert response.status.name == "ECA_PUTFAIL"
        assert b"refused by the device" in bytes(response.error_message)
        assert pv.read(timeout=10).data[0] == 0
    finally:
        ctx.disconnect(wait=False)
