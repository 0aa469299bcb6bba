"""Fixes for caproto 1.3's asyncio server, applied when the IOC starts.

The rest make it cheaper rather than more correct, each saving the event loop
a task or a trip round it on every request (``_event_wait``,
``_get_from_sub_queue``, ``_recv``, ``_run_write_now``), and answering a put
before its monitor updates are built (``_run_write_now``). Together they took a
put-with-callback round trip from 2.0-2.3x EPICS base's to about 1.4x
(BENCHMARKS.md).

When a client vanishes (TCP reset) while the server streams updates to it,
several tasks of its circuit notice: the subscription task (its send fails),
the command task and the TCP handler (their send or receive fails). Each runs
``VirtualCircuit._on_disconnect``, which cancels the subscription task and
awaits it. Run by the subscription task itself, that cancels and awaits
*itself*; a handler awaiting it at the same time fails with "RuntimeError:
await wasn't used with future" and dies before ``circuit_disconnected``: two
tracebacks in the log, and the circuit is never removed from the server.

A cancellation can also be lost: Python 3.11's ``asyncio.wait_for`` swallows
one that arrives just as its inner wait completes, which is common while
updates stream. The subscription task then waits for updates that never come,
and whatever awaits it waits for ever (a churn of 500 clients lost the first
cancellation of most of their circuits).

The replacement does what the original means: disconnect the subscriptions
once, close the socket, and stop the subscription task unless it is the task
running this (it ends by itself right after), repeating the cancellation until
the task has ended and without taking on its exception.
"""

from __future__ import annotations

import asyncio
import contextvars
import socket

import caproto as _ca
from caproto import ChannelData
from caproto.asyncio import server as _asyncio_server
from caproto.server.common import DisconnectedCircuit, LoopExit
from caproto.server.common import VirtualCircuit as _CommonCircuit

_CANCEL_ATTEMPTS = 50
_CANCEL_WAIT = 0.1  # seconds between attempts


async def _on_disconnect(self) -> None:  # type: ignore[no-untyped-def]
    await _CommonCircuit._on_disconnect(self)
    self.client.close()
    task = self._sub_task
    if task is None or task is asyncio.current_task():
        return
    for _ in range(_CANCEL_ATTEMPTS):
        task.cancel()
        # asyncio.wait neither raises the task's own exception nor hides our cancellation.
        await asyncio.wait({task}, timeout=_CANCEL_WAIT)
        if task.done():
            break
    if self._sub_task is task:
        self._sub_task = None


_original_create_tcp = _asyncio_server._create_bound_tcp_socket


async def _create_bound_tcp_socket_nodelay(addr, port):  # type: ignore[no-untyped-def]
    """caproto's listening socket, with Nagle's algorithm off.

    caproto creates it with protocol 0, so asyncio never sets TCP_NODELAY (it
    does so only when ``sock.proto == IPPROTO_TCP``). With Nagle on, a put's
    reply that follows a monitor update waits for the client's delayed ACK,
    about 40 ms. Accepted circuits inherit the option from the listener on Linux.
    """
    sock = await _original_create_tcp(addr, port)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def _event_wait(self, timeout=None):  # type: ignore[no-untyped-def]
    """``AsyncioEvent.wait(timeout)`` without a new task when it can.

    caproto awaits its circuit's write event before every read and every new
    subscription, almost always already set; its ``asyncio.wait_for`` made a
    task and a timer for each. ``asyncio.timeout`` needs neither.
    """
    if self.is_set():
        return True
    try:
        async with asyncio.timeout(timeout):
            await asyncio.Event.wait(self)
    except TimeoutError:
        pass
    return self.is_set()


async def _get_from_sub_queue(self, timeout=None):  # type: ignore[no-untyped-def]
    """The next queued subscription update, or None after ``timeout`` seconds.

    Called once or twice for every update sent; caproto's ``asyncio.wait_for``
    made a task and a timer each time, even with the update already queued.
    """
    queue = self.subscription_queue
    if not queue.empty():
        return queue.get_nowait()
    try:
        async with asyncio.timeout(timeout):
            return await queue.get()
    except TimeoutError:
        return None


class _HeldPublishes(list):
    """Publications held back while one client write is answered.

    A task created during the write inherits the context, and with it this
    object: once ``open`` is False its publications go straight out again.
    """

    open = True


_held: contextvars.ContextVar[_HeldPublishes | None] = contextvars.ContextVar(
    "bgrscrpt_held_publishes", default=None
)
_original_publish = ChannelData.publish


async def _publish(self, flags):  # type: ignore[no-untyped-def]
    """ChannelData.publish, held back while a client's write is being answered."""
    held = _held.get()
    if held is not None and held.open:
        held.append((self, flags))
        return
    await _original_publish(self, flags)


async def _run_write_now(self, handle_write):  # type: ignore[no-untyped-def]
    """Carry out a client's write in the circuit's command loop: reply, then publish.

    caproto starts a task per write so that a putter that waits on hardware does
    not hold up the circuit; this IOC's putters never wait, and the task cost a
    trip round the event loop on every put. A ``DisconnectedCircuit`` raised by
    the reply now reaches the command loop, which closes the circuit, rather
    than ending a task nobody awaits.

    The monitor updates the write causes are built right after the reply
    instead of before it. The value is stored before the reply either way (a
    read after the put's callback sees it); the client just no longer waits
    while the updates are built. EPICS base answers a put and posts its
    monitors on separate paths too. Nothing else runs in between, so the
    updates carry the values they would have carried.
    """
    held = _HeldPublishes()
    token = _held.set(held)
    try:
        await handle_write()
    finally:
        held.open = False
        _held.reset(token)
        for channel, flags in held:
            await _original_publish(channel, flags)


async def _one_command(self, command):  # type: ignore[no-untyped-def]
    """What caproto's command loop does with one command, marked as under way."""
    self._busy = True
    try:
        response = await self._command_queue_iteration(command)
        if response is not None:
            await self.send(*response)
        await self._wake_new_command()
    finally:
        self._busy = False


async def _command_queue_loop(self):  # type: ignore[no-untyped-def]
    """caproto's command loop (its asyncio flavour), with ``_one_command`` as its body."""
    self.write_event.set()
    try:
        while True:
            await _one_command(self, await self.command_queue.get())
    except DisconnectedCircuit:
        await self._on_disconnect()
        self.circuit.disconnect()
        await self.context.circuit_disconnected(self)
    except (asyncio.CancelledError, LoopExit):
        pass
    except RuntimeError:
        if not asyncio.get_running_loop().is_closed():
            raise


async def _recv(self):  # type: ignore[no-untyped-def]
    """Receive commands and carry them out here when the command task is idle.

    caproto queues every command for the circuit's command task: a trip round
    the event loop per request. When that task has nothing queued and nothing
    under way, the command runs here at once, in the order it would have run
    there; otherwise it is queued behind the others.
    """
    try:
        received = await self.client.recv(4096)
    except OSError:
        received = []
    commands, _ = self.circuit.recv(received)
    for command in commands:
        idle = self.command_queue.empty() and not self._busy
        if idle and command is not _ca.DISCONNECTED:
            try:
                await _one_command(self, command)
            except (DisconnectedCircuit, LoopExit):
                # What the command loop does on these: the circuit is done with.
                await self._on_disconnect()
                self.circuit.disconnect()
                raise DisconnectedCircuit() from None
            continue
        try:
            self.command_queue.put_nowait(command)
        except asyncio.QueueFull:
            # As caproto: a client this far ahead is cut off rather than buffered.
            await self._on_disconnect()
            raise DisconnectedCircuit() from None
    if not received:
        await self._on_disconnect()
        raise DisconnectedCircuit()


def install() -> None:
    """Apply the fixes to caproto's asyncio server (idempotent)."""
    circuit = _asyncio_server.VirtualCircuit
    circuit._on_disconnect = _on_disconnect  # type: ignore[method-assign]
    circuit.get_from_sub_queue = _get_from_sub_queue  # type: ignore[method-assign]
    circuit._start_write_task = _run_write_now  # type: ignore[method-assign]
    circuit._busy = False  # a command of this circuit under way (set by _one_command)
    circuit.recv = _recv  # type: ignore[method-assign]
    circuit.command_queue_loop = _command_queue_loop  # type: ignore[method-assign]
    ChannelData.publish = _publish  # type: ignore[method-assign]
    _asyncio_server.AsyncioEvent.wait = _event_wait  # type: ignore[method-assign]
    _asyncio_server._create_bound_tcp_socket = _create_bound_tcp_socket_nodelay
