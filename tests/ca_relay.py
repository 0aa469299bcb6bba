"""A Channel Access relay that can cut the link: a network partition on loopback.

Clients list the relay (``127.0.0.1:<relay.port>``) in ``EPICS_CA_ADDR_LIST``
instead of the server. The relay forwards their UDP searches to the server and
the replies back, with the server's TCP port in each search reply replaced by
its own, so every circuit the clients open runs through it too.

:meth:`CaRelay.cut` stops forwarding in both directions, as a partition does:
datagrams are dropped, and TCP data is no longer read, so it waits in the
kernel's buffers as unacknowledged data waits for a link to return; a circuit
opened meanwhile is accepted but goes nowhere. :meth:`CaRelay.restore` resumes
(data held back is delivered, as TCP would retransmit it);
``restore(reset=True)`` first drops every circuit that was open, as a server
that gave up on its clients during the partition would.

:meth:`CaRelay.circuits` plays a server whose searches are answered but whose
circuits fail: ``"refuse"`` (the connection is refused, as by a server that
has just died or a firewall) or ``"reset"`` (accepted, then reset at once, as
by a server that refuses every client) or ``"drop"`` (the handshake goes
through, then the circuit is reset, as by a server that drops every client);
``"forward"`` is the normal relay.

The relay runs on an event loop of its own, in a thread, so that synchronous
tests and tests with their own loop can both use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from devsupport.ports import free_ca_port

_HEADER = struct.Struct(">HHHHII")  # command, payload size, data type, count, p1, p2
_SEARCH = 6
_ANY_ADDRESS = 0xFFFFFFFF  # "the server is the sender of this datagram"


def rewrite_search_replies(datagram: bytes, port: int) -> bytes:
    """``datagram`` (CA messages from a server) with every search reply pointing at
    ``port`` on the datagram's sender."""
    out = bytearray(datagram)
    offset = 0
    while offset + _HEADER.size <= len(out):
        command, size, data_type, count, p1, p2 = _HEADER.unpack_from(out, offset)
        if command == _SEARCH:
            _HEADER.pack_into(out, offset, command, size, port, count, _ANY_ADDRESS, p2)
        offset += _HEADER.size + size
    return bytes(out)


class _Datagrams(asyncio.DatagramProtocol):
    def __init__(self, on_datagram: Callable[[bytes, Any], None]):
        self.on_datagram = on_datagram

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.on_datagram(data, addr)

    def error_received(self, exc: Exception) -> None:  # e.g. ICMP port unreachable
        pass


class CaRelay:
    """Relays CA to a server on ``127.0.0.1:target_port``; ``cut`` and ``restore`` the link."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1"):
        self.target = (target_host, target_port)
        self.port = 0
        self.searches = 0  # search datagrams forwarded (clients' searches that got through)
        self.accepted = 0  # TCP circuits accepted
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._open = asyncio.Event()
        self._udp: asyncio.DatagramTransport | None = None
        # Per client: a socket towards the server, or the datagrams waiting for it.
        self._upstream: dict[Any, asyncio.DatagramTransport | list[bytes]] = {}
        self._server: asyncio.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter | None]] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._mode = "forward"

    # ---- what tests call (from any thread) ------------------------------------------

    def start(self) -> CaRelay:
        self._thread.start()
        self._call(self._start())
        return self

    def cut(self) -> None:
        """Stop forwarding anything, both ways."""
        self._call(self._set_open(False))

    def restore(self, *, reset: bool = False) -> None:
        """Forward again; ``reset``: first drop every circuit open now."""
        self._call(self._restore(reset))

    def circuits(self, mode: str) -> None:
        """What happens to new circuits: "forward", "refuse", "reset" or "drop"."""
        assert mode in ("forward", "refuse", "reset", "drop"), mode
        self._call(self._set_mode(mode))

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        self._call(self._close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> CaRelay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ---- on the relay's loop ----------------------------------------------------------

    async def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self.port = free_ca_port()
        self._open.set()
        self._udp, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(self._from_client), local_addr=("127.0.0.1", self.port)
        )
        self._server = await asyncio.start_server(self._circuit, "127.0.0.1", self.port)

    async def _set_open(self, is_open: bool) -> None:
        if is_open:
            self._open.set()
        else:
            self._open.clear()

    async def _set_mode(self, mode: str) -> None:
        if (mode == "refuse") != (self._mode == "refuse"):
            if mode == "refuse":
                assert self._server is not None
                self._server.close()  # nothing listens: connections are refused
            else:
                self._server = await asyncio.start_server(self._circuit, "127.0.0.1", self.port)
        self._mode = mode

    async def _restore(self, reset: bool) -> None:
        if reset:
            for client, server in list(self._links):
                _abort(client)
                if server is not None:
                    _abort(server)
            self._links.clear()
        self._open.set()

    async def _close(self) -> None:
        self._open.set()
        if self._server is not None:
            self._server.close()
        for client, server in list(self._links):
            _abort(client)
            if server is not None:
                _abort(server)
        # The circuits' tasks end once their sockets are gone (cancelling one
        # that asyncio's server started makes asyncio log a traceback).
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        if self._udp is not None:
            self._udp.close()
        for transport in self._upstream.values():
            if not isinstance(transport, list):
                transport.close()
        await asyncio.sleep(0.01)  # transports close their sockets on the next turn of the loop

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # UDP: a socket towards the server per client, so replies find their way back.

    def _from_client(self, data: bytes, client: Any) -> None:
        if not self._open.is_set():
            return
        self.searches += 1
        upstream = self._upstream.get(client)
        if isinstance(upstream, list):  # its socket is being made
            upstream.append(data)
        elif upstream is not None:
            upstream.sendto(data)
        else:
            self._upstream[client] = [data]
            self._spawn(self._new_upstream(client))

    async def _new_upstream(self, client: Any) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _Datagrams(lambda reply, _addr: self._from_server(reply, client)),
            remote_addr=self.target,
        )
        waiting = self._upstream[client]
        self._upstream[client] = transport
        assert isinstance(waiting, list)
        for data in waiting:
            transport.sendto(data)

    def _from_server(self, data: bytes, client: Any) -> None:
        if self._open.is_set() and self._udp is not None:
            self._udp.sendto(rewrite_search_replies(data, self.port), client)

    # TCP: one connection to the server per circuit; nothing is read while cut.

    async def _circuit(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._mode == "reset":
            _abort(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter | None] = (writer, None)
        self._links.add(link)
        try:
            await self._open.wait()  # a circuit opened during a cut goes nowhere until it ends
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                _abort(writer)
                return
            self._links.discard(link)
            link = (writer, up_writer)
            self._links.add(link)
            drop = self._mode == "drop"
            await asyncio.gather(
                self._pump(reader, up_writer),
                self._pump(up_reader, writer, drop=drop),
                return_exceptions=True,
            )
        finally:
            self._links.discard(link)
            for w in link:
                if w is not None:
                    _abort(w)
            self._tasks.discard(task)

    async def _pump(
        self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, drop: bool = False
    ) -> None:
        """Copy ``source`` to ``sink``; ``drop``: reset the circuit after the first reply."""
        while True:
            await self._open.wait()
            data = await source.read(65536)
            await self._open.wait()  # read just before a cut: held back until restored
            if not data:
                break
            if sink.is_closing():
                break
            sink.write(data)
            await sink.drain()
            if drop:
                await asyncio.sleep(0.05)  # the client has the handshake
                for link in [link for link in self._links if sink in link]:
                    for writer in link:
                        if writer is not None:
                            _abort(writer)
                return
        with contextlib.suppress(OSError):
            if not sink.is_closing() and sink.can_write_eof():
                sink.write_eof()


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close at once with a reset, as a peer that gave up does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
