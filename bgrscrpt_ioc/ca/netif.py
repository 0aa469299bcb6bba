"""What the host's network looks like: IPv4 interfaces, and who holds a port.

Linux only (ioctl and /proc), read-only, and never fatal: a host that does not
tell gives an empty answer, and the caller says so.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import ipaddress
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

_SIOCGIFCONF = 0x8912
_SIOCGIFFLAGS = 0x8913
_SIOCGIFBRDADDR = 0x8919
_SIOCGIFNETMASK = 0x891B
_SIOCGIFDSTADDR = 0x8917
_IFF_UP = 0x1
_IFF_BROADCAST = 0x2
_IFF_LOOPBACK = 0x8
_IFF_POINTOPOINT = 0x10
_IFREQ_SIZE = 40  # struct ifreq on 64-bit Linux: 16 bytes of name, 24 of union


@dataclass(frozen=True)
class Interface:
    """One IPv4 address of a network interface."""

    name: str
    address: str
    netmask: str
    broadcast: str | None
    """Where a broadcast on its subnet goes (the peer of a point-to-point link)."""
    loopback: bool

    def network(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{self.address}/{self.netmask}", strict=False)


def interfaces() -> list[Interface]:
    """Every IPv4 address of every interface that is up (SIOCGIFCONF and friends)."""
    found: list[Interface] = []
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for name, address in _addresses(sock):
            flags = _flags(sock, name)
            if not flags & _IFF_UP:
                continue
            netmask = _ioctl_address(sock, _SIOCGIFNETMASK, name) or "255.255.255.255"
            broadcast = None
            if flags & _IFF_BROADCAST:
                broadcast = _ioctl_address(sock, _SIOCGIFBRDADDR, name)
            elif flags & _IFF_POINTOPOINT:
                broadcast = _ioctl_address(sock, _SIOCGIFDSTADDR, name)
            elif flags & _IFF_LOOPBACK:
                # Loopback has no broadcast flag, but Linux routes 127.255.255.255
                # to every socket bound to it: IBEX's CA clients search there.
                network = ipaddress.IPv4Network(f"{address}/{netmask}", strict=False)
                broadcast = str(network.broadcast_address)
            found.append(Interface(name, address, netmask, broadcast, bool(flags & _IFF_LOOPBACK)))
    return found


def _addresses(sock: socket.socket) -> list[tuple[str, str]]:
    size = _IFREQ_SIZE * 128
    buffer = array.array("B", bytes(size))
    pointer, _ = buffer.buffer_info()
    request = struct.pack("iL", size, pointer)
    try:
        length = struct.unpack("iL", fcntl.ioctl(sock.fileno(), _SIOCGIFCONF, request))[0]
    except OSError:
        return []
    raw = buffer.tobytes()
    out = []
    for offset in range(0, length, _IFREQ_SIZE):
        name = raw[offset : offset + 16].split(b"\0", 1)[0].decode()
        family = struct.unpack_from("H", raw, offset + 16)[0]
        if family == socket.AF_INET:
            out.append((name, socket.inet_ntoa(raw[offset + 20 : offset + 24])))
    return out


def _flags(sock: socket.socket, name: str) -> int:
    request = struct.pack("16sH", name.encode()[:15], 0)
    try:
        return int(
            struct.unpack("16sH", fcntl.ioctl(sock.fileno(), _SIOCGIFFLAGS, request)[:18])[1]
        )
    except OSError:
        return 0


def _ioctl_address(sock: socket.socket, request_code: int, name: str) -> str | None:
    request = struct.pack("16s16s", name.encode()[:15], b"")
    try:
        reply = fcntl.ioctl(sock.fileno(), request_code, request)
    except OSError:
        return None
    return socket.inet_ntoa(reply[20:24])


# ---- who holds a port -----------------------------------------------------------------

_TCP_LISTEN = "0A"


@dataclass(frozen=True)
class Holder:
    """A process with a socket on a port, as /proc shows it."""

    pid: int
    name: str

    def __str__(self) -> str:
        return f"{self.name} (pid {self.pid})"


def bound_sockets(protocol: str, port: int) -> list[tuple[str, int]]:
    """(local address, inode) of every ``protocol`` ("tcp" or "udp") socket on ``port``.

    TCP counts listening sockets only: a connection that merely uses the
    port number does not stop a server binding it.
    """
    found = []
    for table in (protocol, protocol + "6"):
        try:
            lines = Path("/proc/net", table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            if len(parts) < 10:
                continue
            address_hex, port_hex = parts[1].rsplit(":", 1)
            if int(port_hex, 16) != port:
                continue
            if protocol == "tcp" and parts[3] != _TCP_LISTEN:
                continue
            found.append((_address(address_hex), int(parts[9])))
    return found


def _address(hex_address: str) -> str:
    """A /proc/net address (host byte order words) as text; an IPv6 one as its IPv4
    equivalent where it has one (``::`` is 0.0.0.0, ``::ffff:a.b.c.d`` is a.b.c.d)."""
    raw = bytes.fromhex(hex_address)
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
    packed = b"".join(words)
    if len(packed) == 4:
        return socket.inet_ntoa(packed)
    ip = ipaddress.IPv6Address(packed)
    if ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return "0.0.0.0" if ip == ipaddress.IPv6Address("::") else str(ip)


def holders(inodes: set[int]) -> list[Holder]:
    """The processes that have a socket with one of these inodes open (those /proc lets us see)."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    found: dict[int, Holder] = {}
    with os.scandir("/proc") as processes:
        pids = [int(entry.name) for entry in processes if entry.name.isdigit()]
    for pid in pids:
        if any(link in wanted for link in _fd_links(pid)):
            found[pid] = Holder(pid, _process_name(pid))
    return sorted(found.values(), key=lambda holder: holder.pid)


def _fd_links(pid: int) -> list[str]:
    """What the process's file descriptors point at ("socket:[123]" ...); [] when hidden."""
    links = []
    with contextlib.suppress(OSError), os.scandir(f"/proc/{pid}/fd") as fds:
        for fd in fds:
            with contextlib.suppress(OSError):
                links.append(os.readlink(fd.path))
    return links


def _process_name(pid: int) -> str:
    """The command name; for an interpreter, the script or module it runs too."""
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    args = [arg.decode(errors="replace") for arg in argv if arg]
    if name.startswith("python") and len(args) > 1:
        shown = args[1:3] if args[1] == "-m" else args[1:2]
        return " ".join([name, *shown])
    return name
