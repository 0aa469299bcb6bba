"""Loopback ports for Channel Access servers started by the tests, the bench and the demo.

Every server started here listens on 127.0.0.1 on a port of its own, and clients
find them through ``EPICS_CA_ADDR_LIST`` (see :mod:`devsupport.ca_env`).
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterable
from pathlib import Path


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _ephemeral_ports() -> range:
    """The ports the kernel hands out to sockets bound to port 0."""
    try:
        text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
        low, high = (int(x) for x in text.split())
    except (OSError, ValueError):
        low, high = 32768, 60999
    return range(low, high + 1)


PORT_SHARD_VAR = "BGRSCRPT_PORT_SHARD"
"""``N/M``: pick only ports ``p`` with ``p % M == N``. Test runs in parallel processes
(one shard each) then never pick the same port, even one not yet bound."""


def _port_shard() -> tuple[int, int]:
    shard, _, shards = os.environ.get(PORT_SHARD_VAR, "0/1").partition("/")
    try:
        n, m = int(shard), int(shards)
    except ValueError:
        return 0, 1
    return (n, m) if 0 <= n < m else (0, 1)


def free_ca_port(avoid: Iterable[int] = ()) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (CA uses both), for a CA server
    that clients will find through ``EPICS_CA_ADDR_LIST``.

    Never one the kernel could give a client's own UDP socket: a client whose
    socket landed on a port of its address list would hear its own search
    request, which has the same command code as a search reply, and take itself
    for the server of every name it searched.
    """
    avoid = set(avoid)
    ephemeral = _ephemeral_ports()
    shard, shards = _port_shard()
    candidates = [
        p
        for p in range(10000, 65536)
        if p not in ephemeral and p not in avoid and p % shards == shard
    ]
    while True:
        port = random.choice(candidates)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


def reserve_ports(count: int) -> list[int]:
    """``count`` different ports, each free now (see :func:`free_ca_port`)."""
    ports: list[int] = []
    while len(ports) < count:
        ports.append(free_ca_port(ports))
    return ports


class PortPool:
    """Hands out ports reserved before libca started (libca reads its address list once).

    ``cycle``: start again at the first port once all are taken (the tests: each
    test's IOCs are stopped before the pool comes round again); otherwise running
    out is an error (the bench: every figure gets ports of its own).
    """

    def __init__(self, ports: list[int], *, cycle: bool = False, hint: str = ""):
        self.ports = list(ports)
        self.cycle = cycle
        self.hint = hint  # what to do when the pool runs out
        self.next = 0

    def take(self) -> int:
        if self.next >= len(self.ports) and not self.cycle:
            raise RuntimeError(f"port pool exhausted ({len(self.ports)} ports): {self.hint}")
        port = self.ports[self.next % len(self.ports)]
        self.next += 1
        return port
