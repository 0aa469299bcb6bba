"""Fixes for caproto 1.3's asyncio server, applied when the IOC starts.

Three make it cheaper rather than more correct: ``_event_wait``,
``_get_from_sub_queue`` and ``_run_write_now`` each save the event loop a task
or a trip round it on every read, monitor update or put.

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
import socket

from caproto.asyncio import server as _asyncio_server
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


async def _run_write_now(self, handle_write):  # type: ignore[no-untyped-def]
    """Carry out a write in the circuit's command loop instead of a task of its own.

    caproto starts a task per write so that a putter that waits on hardware does
    not hold up the circuit; this IOC's putters never wait, and the task cost a
    trip round the event loop on every put. A ``DisconnectedCircuit`` raised by
    the reply now reaches the command loop, which closes the circuit, rather
    than ending a task nobody awaits.
    """
    await handle_write()


def install() -> None:
    """Apply the fixes to caproto's asyncio server (idempotent)."""
    circuit = _asyncio_server.VirtualCircuit
    circuit._on_disconnect = _on_disconnect  # type: ignore[method-assign]
    circuit.get_from_sub_queue = _get_from_sub_queue  # type: ignore[method-assign]
    circuit._start_write_task = _run_write_now  # type: ignore[method-assign]
    _asyncio_server.AsyncioEvent.wait = _event_wait  # type: ignore[method-assign]
    _asyncio_server._create_bound_tcp_socket = _create_bound_tcp_socket_nodelay
