"""A Channel Access client at the level of the bytes, for the server's tests.

Built on caproto's protocol state machine over a blocking socket, so a test can
do what libca never does: stop reading, send garbage or a header that lies, reset
the connection mid-stream, or look at the exact order of messages on the wire.
Every call blocks; run it with ``asyncio.to_thread`` when the server shares the
test's event loop.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from typing import Any

import caproto as ca


class RawClient:
    """One CA circuit to ``127.0.0.1:port``; messages received are kept in ``received``."""

    def __init__(self, port: int, *, name: str = "raw", timeout: float = 5.0) -> None:
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.circuit = ca.VirtualCircuit(ca.CLIENT, ("127.0.0.1", port), 0)
        self.received: list[Any] = []
        self.closed_by_server = False
        self._ioid = 0
        self.send(
            ca.VersionRequest(priority=0, version=13),
            ca.HostNameRequest(f"{name}-host"),
            ca.ClientNameRequest(f"{name}-user"),
        )

    # ---- sending ---------------------------------------------------------------

    def send(self, *commands: Any) -> None:
        self.sock.sendall(b"".join(self.circuit.send(*commands)))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    def channel(self, name: str) -> ca.ClientChannel:
        """A connected channel to ``name``."""
        chan = ca.ClientChannel(name, self.circuit)
        self.send(chan.create())
        self.until(lambda: chan.states[ca.CLIENT] is ca.CONNECTED, f"{name} to connect")
        return chan

    def next_ioid(self) -> int:
        self._ioid += 1
        return self._ioid

    # ---- receiving ---------------------------------------------------------------

    def pump(self, timeout: float = 5.0) -> list[Any]:
        """Receive once (up to ``timeout``); the messages it brought. EOF sets closed_by_server."""
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(262144)
        except TimeoutError:
            return []
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            self.closed_by_server = True
            return []
        commands, _ = self.circuit.recv(data)
        out = []
        for command in commands:
            self.circuit.process_command(command)
            out.append(command)
        self.received += out
        return out

    def until(self, condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
        """Receive until ``condition()`` is truthy; AssertionError after ``timeout``."""
        deadline = time.monotonic() + timeout
        while True:
            result = condition()
            if result:
                return result
            left = deadline - time.monotonic()
            if left <= 0 or self.closed_by_server:
                raise AssertionError(
                    f"timed out waiting for {what} (closed: {self.closed_by_server})"
                )
            self.pump(min(left, 0.5))

    def wait_closed(self, timeout: float = 10.0) -> float:
        """Read and discard until the server closes the connection; seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        self.sock.settimeout(0.5)
        while time.monotonic() < deadline:
            try:
                if not self.sock.recv(1 << 20):
                    return time.monotonic() - start
            except TimeoutError:
                continue
            except OSError:
                return time.monotonic() - start
        raise AssertionError(f"the server did not close the connection within {timeout:g} s")

    def events(self, subscriptionid: int | None = None) -> list[Any]:
        return [
            c
            for c in self.received
            if isinstance(c, ca.EventAddResponse)
            and (subscriptionid is None or c.subscriptionid == subscriptionid)
        ]

    # ---- requests -------------------------------------------------------------------

    def read(self, chan: ca.ClientChannel, data_type: Any = None) -> Any:
        """A ReadNotify round trip: the response (or ErrorResponse)."""
        ioid = self.next_ioid()
        self.send(chan.read(data_type=data_type, ioid=ioid))
        return self.until(lambda: self._reply(ioid), f"the reply to read {ioid}")

    def write(self, chan: ca.ClientChannel, value: Any) -> Any:
        """A WriteNotify round trip: the response (or ErrorResponse)."""
        ioid = self.next_ioid()
        self.send(chan.write([value], ioid=ioid, notify=True))
        return self.until(lambda: self._reply(ioid), f"the reply to write {ioid}")

    def _reply(self, ioid: int) -> Any:
        for command in self.received:
            if getattr(command, "ioid", None) == ioid:
                return command
            if isinstance(command, ca.ErrorResponse):
                original = command.original_request
                if getattr(original, "parameter2", None) == ioid:
                    return command
        return None

    def close(self, reset: bool = False) -> None:
        if reset:  # SO_LINGER 0: close() sends RST, the client vanishes
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()


def ca_header(command: int, payload: int, data_type: int = 0, count: int = 0) -> bytes:
    """A plain 16-byte CA header."""
    return struct.pack(">HHHHII", command, payload, data_type, count, 0, 0)


def extended_header(command: int, payload: int, data_type: int = 6, count: int = 1) -> bytes:
    """A 24-byte extended CA header claiming ``payload`` bytes."""
    return struct.pack(">HHHHIIII", command, 0xFFFF, data_type, 0, 0, 0, payload, count)
