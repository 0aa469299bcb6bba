"""Running an EPICS base IOC (``python -m epicscorelibs.ioc``) next to this one.

The demo, the tests and the benchmarks all start EPICS base IOCs on one machine,
and each must stay alone on its own loopback ports: base takes
``EPICS_CAS_SERVER_PORT`` before ``EPICS_CA_SERVER_PORT`` (an inherited value
would put two servers on one port), and its pvAccess server (QSRV) would
otherwise listen on every interface on the default pvAccess ports.
"""

from __future__ import annotations

import socket
from collections.abc import Mapping


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
