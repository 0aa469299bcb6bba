"""Accepting clients' connections within the IOC's file descriptors, quietly.

:class:`BoundedAccept` is a mixin for caproto's asyncio server ``Context`` (put
it before ``Context`` in the bases); it replaces ``server_accept_loop``, which
handed the listening socket to ``asyncio.start_server``. What that did, and why
it cannot stay:

* **No bound.** Every connection a client opens and holds costs a file
  descriptor. A host opening a few hundred connections (a port scanner, a
  client in a reconnect loop, anyone) took the IOC to its open-file limit: it
  could not start a script any more (the slot went FATAL with "Too many open
  files") nor open its state database. Here at most ``limits.max_clients``
  connections are served at once (:func:`~bgrscrpt_ioc.ca.limits.max_clients`
  keeps a share of the limit for the IOC); one more is accepted and closed at
  once, so it neither waits in the kernel's backlog nor costs a descriptor.
* **A flood, and a spin.** When ``accept()`` failed for want of descriptors,
  asyncio logged a traceback for each of up to 100 attempts per turn of the
  event loop and scheduled as many retries, each of which did the same:
  thousands of tracebacks a second, the loop busy. Here such a failure is one
  log line a minute, and accepting waits (until a connection ends, or
  :data:`RETRY_DELAY`) before it tries again.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from typing import TYPE_CHECKING, Any

from caproto.asyncio.utils import _TransportWrapper

from bgrscrpt_ioc.core.ratelimit import OncePerInterval

from .client_faults import INTERVAL
from .limits import open_file_limit

log = logging.getLogger("bgrscrpt_ioc.ca")

BACKLOG = 100
"""Connections the kernel holds for the server before it accepts them (asyncio's default)."""
RETRY_DELAY = 1.0
"""Seconds accepting waits after the system refused a descriptor (asyncio's own delay)."""
OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
GONE_BEFORE_ACCEPTED = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM})
"""The connection ended (or a firewall refused it) before it was accepted: the next one."""


class BoundedAccept:
    """Mixin for caproto's asyncio server ``Context``: accept no more connections than
    ``self.limits.max_clients``, and survive running out of descriptors in one line."""

    limits: Any
    server_tasks: Any

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.open_connections = 0
        """Connections accepted and not yet ended."""
        self._connection_ended = asyncio.Event()
        self._accept_reports = OncePerInterval(INTERVAL)

    if TYPE_CHECKING:  # caproto's Context provides it

        async def tcp_handler(self, client: Any, addr: Any) -> None: ...

    async def server_accept_loop(self, sock: socket.socket) -> None:
        """Accept connections on the listening ``sock`` until cancelled."""
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        sock.listen(BACKLOG)  # as asyncio.start_server: caproto binds, but need not listen
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in GONE_BEFORE_ACCEPTED:
                    continue
                if exc.errno not in OUT_OF_RESOURCES:
                    raise
                self._report(
                    "resources",
                    "cannot accept CA clients: %s (open-file limit %s); retrying",
                    exc.strerror or exc,
                    _limit_text(),
                )
                await self._wait_for_room()
                continue
            if self.open_connections >= self.limits.max_clients:
                conn.close()
                self._report(
                    "full",
                    "CA connection from %s:%d refused: %d clients connected, the most this "
                    "IOC serves with an open-file limit of %s (ulimit -n; the rest is kept "
                    "to run scripts)",
                    *addr,
                    self.open_connections,
                    _limit_text(),
                )
                continue
            self.open_connections += 1
            task = self.server_tasks.create(self._serve_connection(conn))
            task.add_done_callback(self._connection_done)

    async def _serve_connection(self, conn: socket.socket) -> None:
        try:
            reader, writer = await asyncio.open_connection(sock=conn)
        except OSError:
            conn.close()
            return
        client = _TransportWrapper(reader, writer)
        await self.tcp_handler(client, client.getpeername())

    def _connection_done(self, task: asyncio.Task[None]) -> None:
        self.open_connections -= 1
        self._connection_ended.set()

    async def _wait_for_room(self) -> None:
        self._connection_ended.clear()
        try:
            async with asyncio.timeout(RETRY_DELAY):
                await self._connection_ended.wait()
        except TimeoutError:
            pass

    def _report(self, kind: str, message: str, *args: Any) -> None:
        allowed, held = self._accept_reports.allow(kind, time.monotonic())
        if allowed:
            more = f" (and {held} more like it since the last such line)" if held else ""
            log.warning(message + "%s", *args, more)


def _limit_text() -> str:
    limit = open_file_limit()
    return "none" if limit < 0 else str(limit)
