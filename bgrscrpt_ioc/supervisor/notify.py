"""The notify channel: datagrams in the style of systemd's ``sd_notify``.

A script (through ``bgrscrpt_ioc.script`` or the IBEX ``register_ioc_start``
shim) sends ``READY=1``, ``WATCHDOG=1`` or ``STATUS=…`` to the address in its
``NOTIFY_SOCKET``; the slot's listener parses them and passes them on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import socket
import struct
from collections.abc import Callable

log = logging.getLogger(__name__)

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_DATAGRAM = 16384
# Datagrams handled per reader callback: a chatty script cannot starve the loop.
_MAX_PER_CALLBACK = 256
_CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


def parse_notify(data: bytes) -> dict[str, str]:
    """``b"READY=1\\nSTATUS=text"`` -> ``{"READY": "1", "STATUS": "text"}``.

    Lines without ``=`` or with a key that is not a variable name are ignored;
    a repeated key keeps its last value.
    """
    fields: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").split("\n"):
        key, sep, value = line.partition("=")
        if sep and _KEY.fullmatch(key):
            fields[key] = value
    return fields


class NotifyListener:
    """A datagram socket in the style of systemd's NOTIFY_SOCKET, one per slot.

    Bound in the Linux abstract namespace (no file to clean up). Datagrams from
    other users are dropped: an abstract socket has no file permissions.
    """

    address: str

    def __init__(self, name: str, on_message: Callable[[dict[str, str]], None]) -> None:
        # The random part keeps two IOCs (or a restarted one) from sharing an address.
        self.address = f"@bgrscrpt/{secrets.token_hex(6)}/{name}"
        self._on_message = on_message
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Bind the socket and start reading on ``loop``. Raises OSError if it cannot bind."""
        if self._sock is not None:
            return
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setblocking(False)
            # Have the kernel attach the sender's pid/uid/gid to every datagram.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
            sock.bind("\0" + self.address[1:])
            loop.add_reader(sock.fileno(), self._readable)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop

    def close(self) -> None:
        """Stop reading and close the socket (idempotent)."""
        if self._sock is not None:
            assert self._loop is not None
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None

    def _readable(self) -> None:
        for _ in range(_MAX_PER_CALLBACK):
            if self._sock is None:  # closed by on_message
                return
            try:
                data, ancdata, _flags, _addr = self._sock.recvmsg(
                    _MAX_DATAGRAM, socket.CMSG_SPACE(_CREDS.size)
                )
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("notify socket %s: %s", self.address, exc)
                return
            if not self._from_our_user(ancdata):
                continue
            try:
                self._on_message(parse_notify(data))
            except Exception:  # a bug downstream must not kill the reader
                log.exception("notify message from %s not handled", self.address)

    @staticmethod
    def _from_our_user(ancdata: list[tuple[int, int, bytes]]) -> bool:
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                _pid, uid, _gid = _CREDS.unpack(payload[: _CREDS.size])
                return uid in (os.getuid(), 0)
        # No credentials attached (not expected on Linux): nothing to check against.
        return True
