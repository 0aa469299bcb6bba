"""How clients find the IOC: its CA port, searches on each interface, beacons.

:class:`DiscoveryMixin` is a mixin for caproto's asyncio server ``Context``
(put it first in the bases). It changes three things caproto 1.3 gets wrong
for an IOC that is the one process an instrument must be able to find:

* **The port is the port.** caproto binds the CA port if it is free and
  otherwise a random TCP port, silently, sharing the UDP search port with
  whoever holds it (with SO_REUSEPORT, so the kernel deals the searches sent
  to the host's address out between the two servers: clients lose searches
  for both). Here the IOC takes exactly ``EPICS_CA_SERVER_PORT``, TCP and
  UDP, or stops with :class:`PortInUse` naming who holds it.

  UDP: EPICS lets several servers share one host's search port, relying on
  broadcast searches, which reach every socket; a search sent to the host's
  own address reaches only one of them (the newest with SO_REUSEADDR; any of
  them, at random, with SO_REUSEPORT). So the IOC never *joins* a search port
  that another socket already holds on the same address (or on the wildcard
  address): that would take the other server's searches, or lose its own.
  It still sets SO_REUSEADDR on its own search socket, as EPICS base's rsrv
  does, so that an EPICS base IOC started later on the same port can share it
  the way EPICS allows (base warns when it does); it no longer sets
  SO_REUSEPORT, whose load balancing lost searches for both servers.

* **Searches by broadcast are heard.** A UDP socket bound to an interface's
  address (what ``--interfaces ADDR`` makes) does not receive the datagrams
  sent to that subnet's broadcast address, which is where clients with
  ``EPICS_CA_AUTO_ADDR_LIST=YES`` search. As rsrv does, the IOC binds a second
  socket to the broadcast address of each interface it serves, and answers
  from the interface's own address.

* **Beacons go where clients are.** caproto sends beacons to
  255.255.255.255 unless told otherwise (which fails with no default route,
  and otherwise goes out of one interface only) and gives every beacon the
  address of the last interface it happened to bind. :func:`beacon_destinations`
  gives EPICS base's rules (each served interface's broadcast address, plus
  ``EPICS_CAS_BEACON_ADDR_LIST``), :func:`beacon_environment` hands them to
  caproto, and each beacon carries the address of the interface on that subnet.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import caproto as ca
from caproto.asyncio import server as _asyncio_server
from caproto.asyncio.utils import _DatagramProtocol, _UdpTransportWrapper

from . import netif

log = logging.getLogger(__name__)

WILDCARD = "0.0.0.0"
LOOPBACK_BROADCAST = "127.255.255.255"
_TCP_BACKLOG = 100  # what asyncio.start_server listens with


class CannotServe(Exception):
    """Channel Access cannot be served as configured (a one-line reason)."""


class PortInUse(CannotServe):
    """The CA port is held by another socket: the IOC cannot serve on it."""


def _yes(value: str | None, default: bool = True) -> bool:
    if value is None or not value.strip():
        return default
    return value.strip().upper() not in ("NO", "N", "FALSE", "0")


def _split(value: str | None) -> list[str]:
    return (value or "").split()


def served_interfaces(
    addresses: Sequence[str], table: Sequence[netif.Interface]
) -> dict[str, netif.Interface | None]:
    """Each served address with the interface that has it (None: no interface has it)."""
    return {
        address: next((i for i in table if i.address == address), None) for address in addresses
    }


def broadcast_addresses(
    addresses: Sequence[str], table: Sequence[netif.Interface]
) -> dict[str, list[str]]:
    """Where the IOC also listens for searches: each served address's subnet broadcast.

    The wildcard address hears every broadcast already.
    """
    out: dict[str, list[str]] = {}
    for address, interface in served_interfaces(addresses, table).items():
        if (
            address == WILDCARD
            or interface is None
            or not interface.broadcast
            or interface.broadcast == interface.address
        ):
            out[address] = []
        else:
            out[address] = [interface.broadcast]
    return out


def beacon_destinations(
    addresses: Sequence[str], env: Mapping[str, str], table: Sequence[netif.Interface]
) -> list[str]:
    """Where beacons go, by EPICS base's rules (host names or addresses, maybe with ports).

    ``EPICS_CAS_BEACON_ADDR_LIST``, then, unless ``EPICS_CAS_AUTO_BEACON_ADDR_LIST``
    is NO, the broadcast address of each served interface: every non-loopback
    interface's for the wildcard address (the loopback broadcast when there is
    none). With neither, beacons stay on this host (127.255.255.255): caproto
    always sends them somewhere, and a CA repeater here is the harmless place.
    """
    out = list(_split(env.get("EPICS_CAS_BEACON_ADDR_LIST")))
    if _yes(env.get("EPICS_CAS_AUTO_BEACON_ADDR_LIST")):
        for address, interface in served_interfaces(addresses, table).items():
            if address == WILDCARD:
                found = [i.broadcast for i in table if i.broadcast and not i.loopback]
                out += found or [LOOPBACK_BROADCAST]
            elif interface is not None and interface.broadcast:
                out.append(interface.broadcast)
            elif ipaddress.IPv4Address(address).is_loopback:
                out.append(LOOPBACK_BROADCAST)
    if not out:
        out = [LOOPBACK_BROADCAST]
    return list(dict.fromkeys(out))


def beacon_environment(addresses: Sequence[str], env: Mapping[str, str]) -> dict[str, str]:
    """The caproto settings that send beacons to :func:`beacon_destinations`.

    caproto reads them when the server starts, and takes an automatic beacon
    list to mean 255.255.255.255; so the list is spelled out and "automatic"
    turned off.
    """
    destinations = beacon_destinations(addresses, env, netif.interfaces())
    return {
        "EPICS_CAS_BEACON_ADDR_LIST": " ".join(destinations),
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
    }


def _overlaps(bound: str, wanted: str) -> bool:
    """Would a socket bound to ``wanted`` share datagrams with one bound to ``bound``?"""
    return bound == wanted or WILDCARD in (bound, wanted)


def _held_by(protocol: str, port: int, addresses: Iterable[str], mine: set[int]) -> str:
    """Who holds ``port`` on any of ``addresses``, in words ("" when nobody we can see)."""
    addresses = list(addresses)
    inodes = {
        inode
        for bound, inode in netif.bound_sockets(protocol, port)
        if inode not in mine and any(_overlaps(bound, a) for a in addresses)
    }
    if not inodes:
        return ""
    found = netif.holders(inodes)
    if not found:
        return "a process this user cannot see"
    return ", ".join(str(holder) for holder in found)


def _in_use(protocol: str, port: int, address: str, holder: str) -> PortInUse:
    where = f"{protocol.upper()} {address}:{port}"
    who = f"held by {holder}" if holder else "in use"
    return PortInUse(
        f"Channel Access port {port} is in use ({where} {who}); stop that, or give this IOC "
        "a port of its own with EPICS_CA_SERVER_PORT"
    )


def _udp_socket(address: str, port: int) -> socket.socket:
    """A search socket: SO_REUSEADDR as rsrv (see the module docstring), not SO_REUSEPORT."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_UDP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setblocking(False)
        sock.bind((address, port))
    except BaseException:
        sock.close()
        raise
    return sock


def _inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


class DiscoveryMixin:
    """Mixin for caproto's asyncio server ``Context``: the CA port or nothing,
    broadcast searches heard on every served interface, beacons where clients are.

    Call :meth:`claim_ports` before anything else starts (it raises
    :class:`PortInUse`); ``run()`` claims them itself otherwise.
    """

    interfaces: list[str]
    ca_server_port: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.interfaces = list(dict.fromkeys(self.interfaces))
        self._tcp_claimed: dict[str, socket.socket] = {}
        self._udp_claimed: dict[str, list[tuple[str, socket.socket]]] = {}
        self._broadcast_transports: list[Any] = []
        self._beacon_failures: set[tuple[str, int]] = set()

    # ---- the port ------------------------------------------------------------------

    async def claim_ports(self, make_socket: Any = None) -> None:
        """Bind the CA port, TCP (listening) and UDP, on every served interface.

        Raises :class:`PortInUse`, naming the holder, when any of them is taken.
        """
        if self._tcp_claimed:
            return
        port = int(self.ca_server_port)
        # Looked up now: the function caproto's own run() would use.
        make_socket = make_socket or _asyncio_server._create_bound_tcp_socket
        table = netif.interfaces()
        tcp: dict[str, socket.socket] = {}
        udp: dict[str, list[tuple[str, socket.socket]]] = {}
        try:
            for interface in self.interfaces:
                try:
                    sock = await make_socket(interface, port)
                    tcp[interface] = sock
                    sock.listen(_TCP_BACKLOG)  # now: a second IOC's bind or listen fails
                except OSError as exc:
                    if exc.errno == errno.EADDRNOTAVAIL:
                        raise CannotServe(
                            f"--interfaces {interface}: this host has no such address"
                        ) from None
                    if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                        raise
                    holder = _held_by("tcp", port, [interface], {_inode(s) for s in tcp.values()})
                    raise _in_use("tcp", port, interface, holder) from None
            mine = {_inode(s) for s in tcp.values()}
            for interface, extra in broadcast_addresses(self.interfaces, table).items():
                udp[interface] = []
                for address in [interface, *extra]:
                    holder = _held_by("udp", port, [address], mine)
                    if holder:
                        raise _in_use("udp", port, address, holder)
                    try:
                        sock = _udp_socket(address, port)
                    except OSError as exc:
                        if exc.errno not in (errno.EADDRINUSE, errno.EACCES):
                            raise
                        raise _in_use("udp", port, address, "") from None
                    udp[interface].append((address, sock))
                    mine.add(_inode(sock))
        except BaseException:
            for sock in tcp.values():
                sock.close()
            for claimed in udp.values():
                for _, sock in claimed:
                    sock.close()
            raise
        self._tcp_claimed, self._udp_claimed = tcp, udp
        heard = [a for claimed in udp.values() for a, _ in claimed]
        log.info("Channel Access on port %d; searches heard on %s", port, ", ".join(heard))

    async def _bind_tcp_sockets_with_consistent_port_number(self, make_socket: Any) -> Any:
        # caproto's own tries a random port when the CA port is taken: never.
        await self.claim_ports(make_socket)
        return int(self.ca_server_port), dict(self._tcp_claimed)

    # ---- searches ------------------------------------------------------------------

    async def _create_broadcaster_transport(self, interface: str) -> None:
        """The search sockets of ``interface``: its own address (which answers) and its
        subnet's broadcast address (heard only)."""
        claimed = self._udp_claimed.pop(interface, None)
        if claimed is None:  # caproto re-creates them after an error (on Windows)
            extra = broadcast_addresses([interface], netif.interfaces())[interface]
            claimed = [
                (address, _udp_socket(address, int(self.ca_server_port)))
                for address in [interface, *extra]
            ]
        loop = asyncio.get_running_loop()
        old = self.udp_socks.pop(interface, None)  # type: ignore[attr-defined]
        if old is not None:
            old.close()
        for index, (_, sock) in enumerate(claimed):
            transport, _ = await loop.create_datagram_endpoint(
                functools.partial(
                    _DatagramProtocol,
                    parent=self,
                    identifier=interface,
                    queue=self.broadcaster_datagram_queue,  # type: ignore[attr-defined]
                ),
                sock=sock,
            )
            if index == 0:
                self.udp_socks[interface] = _UdpTransportWrapper(transport)  # type: ignore[attr-defined]
            else:
                self._broadcast_transports.append(transport)

    async def run(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().run(*args, **kwargs)  # type: ignore[misc]
        finally:
            for transport in self._broadcast_transports:
                transport.close()
            self._broadcast_transports.clear()
            for claimed in self._udp_claimed.values():
                for _, sock in claimed:
                    sock.close()
            self._udp_claimed.clear()

    # ---- beacons -------------------------------------------------------------------

    def _beacon_address(self, destination: str) -> str:
        """The server address a beacon to ``destination`` carries: the served interface
        on that subnet; 0.0.0.0 (the client takes the sender's) when none is."""
        if len(set(self.interfaces)) == 1 and self.interfaces[0] != WILDCARD:
            return self.interfaces[0]
        try:
            target = ipaddress.IPv4Address(destination)
        except ValueError:
            return WILDCARD
        for interface in netif.interfaces():
            if interface.address in self.interfaces and target in interface.network():
                return interface.address
        return WILDCARD

    async def broadcast_beacon_loop(self) -> None:
        """caproto's beacon loop, with each beacon's own server address, and a
        destination that refuses them said once, in one line."""
        min_period, backoff = 0.02, 2  # "RECOMMENDED" by the CA specification
        max_period = self.environ["EPICS_CAS_BEACON_PERIOD"]  # type: ignore[attr-defined]
        period = min_period
        addresses = {dest: self._beacon_address(dest[0]) for dest in self.beacon_socks}  # type: ignore[attr-defined]
        log.info(
            "beacons to %s", ", ".join(f"{host}:{port}" for host, port in addresses) or "nowhere"
        )
        while True:
            for destination, (_, sock) in list(self.beacon_socks.items()):  # type: ignore[attr-defined]
                beacon = ca.Beacon(13, self.port, self.beacon_count, addresses[destination])  # type: ignore[attr-defined]
                try:
                    await sock.send(self.broadcaster.send(beacon))  # type: ignore[attr-defined]
                except OSError as exc:
                    self._beacon_failed(destination, exc)
            self.beacon_count += 1  # type: ignore[attr-defined]
            period = min(max_period, period * backoff)
            await asyncio.sleep(period)

    def _beacon_failed(self, destination: tuple[str, int], exc: OSError) -> None:
        cause = exc.__cause__ if isinstance(exc.__cause__, OSError) else exc
        key = (f"{destination[0]}:{destination[1]}", cause.errno or 0)
        if key in self._beacon_failures:
            return
        self._beacon_failures.add(key)
        log.warning(
            "cannot send beacons to %s (%s); no CA repeater there? Not repeated",
            key[0],
            cause.strerror or cause,
        )
