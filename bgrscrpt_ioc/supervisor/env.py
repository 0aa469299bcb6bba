"""The environment a script runs in (docs/scripts.md)."""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Mapping
from pathlib import Path


@functools.cache
def kit_root() -> Path:
    """The installed kit directory: ``KIT_ROOT`` for scripts (holds ISIS/inst_servers/master)."""
    return Path(__file__).resolve().parent.parent / "kit"


def compat_site_dir() -> Path:
    """The directory put on a script's ``PYTHONPATH``: its ``sitecustomize`` appends the
    compatibility modules (``genie_python``, ``technique``) to the end of ``sys.path``."""
    return kit_root() / "site"


def script_environment(
    base: Mapping[str, str],
    *,
    slot: str,
    config_dir: Path,
    var_dir: Path,
    kit_root: Path,
    notify_socket: str,
    prefix: str,
    macros: dict | None = None,
    own_ca_address: str | None = None,
) -> dict[str, str]:
    """``base`` (the IOC's environment) plus what a script of ``slot`` is promised.

    ``ICPVARDIR`` is kept when set, else ``var_dir``; ``MACROS`` (JSON) is set only
    when ``macros`` is given. Channel Access stays on loopback unless ``base``
    chose its own ``EPICS_CA_ADDR_LIST``, in which case ``EPICS_CA_*`` pass
    through, with the IOC's own CA address (``own_ca_address``, ``host:port``) put
    first when the list does not name it: a list naming only other machines must
    not leave a script unable to reach its own IOC.
    """
    env = dict(base)
    env.update(
        MYPVPREFIX=prefix,
        KIT_ROOT=str(kit_root),
        EPICS_KIT_ROOT=str(kit_root),
        ICPINSTSCRIPTROOT=str(config_dir),
        PYTHONUNBUFFERED="1",
        BGRSCRPT_IOC_NAME=slot,
        NOTIFY_SOCKET=notify_socket,
    )
    # Only a sitecustomize goes in front; it appends the compat modules after
    # site-packages, so a real genie_python installation always wins.
    inherited = base.get("PYTHONPATH", "")
    env["PYTHONPATH"] = str(compat_site_dir()) + (os.pathsep + inherited if inherited else "")
    if not env.get("ICPVARDIR"):
        env["ICPVARDIR"] = str(var_dir)
    if macros is not None:
        env["MACROS"] = json.dumps(macros)
    if "EPICS_CA_ADDR_LIST" not in base:
        # Where the IOC serves (127.0.0.1 by default): no broadcasts leave the machine.
        env["EPICS_CA_ADDR_LIST"] = own_ca_address or "127.0.0.1"
        env["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
    elif own_ca_address and own_ca_address not in base["EPICS_CA_ADDR_LIST"].split():
        env["EPICS_CA_ADDR_LIST"] = f"{own_ca_address} {base['EPICS_CA_ADDR_LIST']}".strip()
    return env


def own_ca_address(interfaces: list[str], port: int) -> str:
    """``host:port`` where a process on this machine finds the IOC's CA server, serving
    on ``interfaces``: loopback when it serves there (or on every interface)."""
    if not interfaces or "127.0.0.1" in interfaces or "0.0.0.0" in interfaces:
        return f"127.0.0.1:{port}"
    return f"{interfaces[0]}:{port}"
