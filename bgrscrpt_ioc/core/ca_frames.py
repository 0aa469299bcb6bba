"""Channel Access message framing, to refuse a message too large before its payload comes.

A CA message over TCP is a 16-byte header whose second field is the payload
size; a header with payload size 0xFFFF and data count 0 is followed by 8 more
bytes giving the real (32-bit) payload size. :class:`FrameGuard` follows the
message boundaries of a byte stream and reports the first header that claims
more than the server takes, or names a command a client may not send, as soon
as that header is complete: before its payload, which garbage can claim to be
anything up to the limit, is waited for.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = 16
EXTENDED_HEADER = 24
EPICS_MAX_TCP = 16384
"""EPICS base's MAX_TCP: the smallest large buffer rsrv gives a client."""


def max_message_bytes(max_array_bytes: int) -> int:
    """The largest CA message (header included) a server takes, as EPICS base's rsrv.

    rsrv sizes a client's large receive buffer at ``EPICS_CA_MAX_ARRAY_BYTES``
    plus room for an extended header (24 bytes), and never below MAX_TCP.
    """
    return max(EPICS_MAX_TCP, max_array_bytes + EXTENDED_HEADER)


@dataclass(frozen=True)
class Oversized:
    """A header that claims more than the server takes."""

    command: int
    message_bytes: int
    limit: int


@dataclass(frozen=True)
class UnknownCommand:
    """A header whose command is none a client may send: not Channel Access."""

    command: int


class FrameGuard:
    """Follows the message boundaries of one client's byte stream."""

    def __init__(self, limit: int, commands: frozenset[int] | None = None) -> None:
        """``limit``: the largest message taken; ``commands``: those a client may send
        (None: any)."""
        if limit < EXTENDED_HEADER:
            raise ValueError(f"limit must be at least {EXTENDED_HEADER} bytes")
        self.limit = limit
        self.commands = commands
        self._header = bytearray()
        self._skip = 0  # payload bytes of the current message still to come

    def between_messages(self) -> bool:
        """True when the stream so far ends with a whole message (or is empty)."""
        return not self._header and not self._skip

    def feed(self, data: bytes | bytearray | memoryview) -> Oversized | UnknownCommand | None:
        """Account for ``data``; the first header in it the server must refuse, if any.

        After such a header the stream cannot be trusted: the caller must close
        the connection (later calls are not meaningful).
        """
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end:
            if self._skip:
                step = min(self._skip, end - pos)
                self._skip -= step
                pos += step
                continue
            want = EXTENDED_HEADER if self._is_extended() else HEADER
            take = min(want - len(self._header), end - pos)
            self._header += view[pos : pos + take]
            pos += take
            if len(self._header) < want:
                continue
            if want == HEADER and self._is_extended():
                continue  # 8 more bytes of header to come
            found = self._message_done()
            if found is not None:
                return found
        return None

    def _is_extended(self) -> bool:
        if len(self._header) < HEADER:
            return False
        payload, count = struct.unpack_from(">H2xH", self._header, 2)
        return bool(payload == 0xFFFF and count == 0)

    def _message_done(self) -> Oversized | UnknownCommand | None:
        command = struct.unpack_from(">H", self._header, 0)[0]
        if self.commands is not None and command not in self.commands:
            return UnknownCommand(command=command)
        if len(self._header) == EXTENDED_HEADER:
            payload = struct.unpack_from(">I", self._header, HEADER)[0]
        else:
            payload = struct.unpack_from(">H", self._header, 2)[0]
        size = len(self._header) + payload
        self._header = bytearray()
        if size > self.limit:
            return Oversized(command=command, message_bytes=size, limit=self.limit)
        self._skip = payload
        return None
