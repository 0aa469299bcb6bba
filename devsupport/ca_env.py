"""Channel Access on loopback for a process that starts servers and talks to them.

libca (pyepics) reads its address list once, when its context is created: so
the ports are reserved first, all listed in ``EPICS_CA_ADDR_LIST`` with
``EPICS_CA_AUTO_ADDR_LIST=NO``, and each server started later gets one of them
(:class:`devsupport.ports.PortPool`). Children inherit the same environment.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping

from devsupport.ports import free_ca_port


def point_ca_at(ports: list[int], env: MutableMapping[str, str] = os.environ) -> None:
    """Make ``env`` (this process's environment by default) reach exactly ``ports`` on
    127.0.0.1, with its own CA repeater port and beacons kept on loopback."""
    env["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
    env["EPICS_CA_ADDR_LIST"] = " ".join(f"127.0.0.1:{p}" for p in ports)
    env["EPICS_CA_REPEATER_PORT"] = str(free_ca_port(ports))
    env["EPICS_CAS_BEACON_ADDR_LIST"] = "127.255.255.255"
    env["EPICS_CAS_AUTO_BEACON_ADDR_LIST"] = "NO"
    env["EPICS_CA_MAX_ARRAY_BYTES"] = "1000000"
    # An inherited server port would put every IOC on one port.
    for name in ("EPICS_CA_SERVER_PORT", "EPICS_CAS_SERVER_PORT", "EPICS_CAS_INTF_ADDR_LIST"):
        env.pop(name, None)
    env.pop("MYPVPREFIX", None)
