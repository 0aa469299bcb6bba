"""Running an EPICS base IOC (``python -m epicscorelibs.ioc``) next to this one.

The demo, the tests and the benchmarks all start EPICS base IOCs on one machine,
and each must stay alone on its own loopback ports: base takes
``EPICS_CAS_SERVER_PORT`` before ``EPICS_CA_SERVER_PORT`` (an inherited value
would put two servers on one port), and its pvAccess server (QSRV) would
otherwise listen on every interface on the default pvAccess ports.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Iterable, Mapping
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


def base_ioc_environment(
    env: Mapping[str, str], ca_port: int, pva_port: int | None = None
) -> dict[str, str]:
    """``env`` for an EPICS base IOC serving Channel Access on ``ca_port`` and
    pvAccess on ``pva_port`` (a free one when None), both on 127.0.0.1 only."""
    pva = str(pva_port if pva_port is not None else free_loopback_port())
    return {
        **env,
        "EPICS_CA_SERVER_PORT": str(ca_port),
        "EPICS_CAS_SERVER_PORT": str(ca_port),
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_SERVER_PORT": pva,
        "EPICS_PVAS_BROADCAST_PORT": pva,
        "EPICS_PVA_BROADCAST_PORT": pva,
    }
