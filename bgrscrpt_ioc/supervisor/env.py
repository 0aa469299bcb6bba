"""The environment a script runs in (README, "What a script sees")."""

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
) -> dict[str, str]:
    """``base`` (the IOC's environment) plus what a script of ``slot`` is promised.

    ``ICPVARDIR`` is kept when set, else ``var_dir``; ``MACROS`` (JSON) is set only
    when ``macros`` is given. Channel Access stays on loopback unless ``base``
    chose its own ``EPICS_CA_ADDR_LIST``, in which case ``EPICS_CA_*`` pass
    through unchanged.
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
        # As the IOC serves on 127.0.0.1: no broadcasts leave the machine.
        env["EPICS_CA_ADDR_LIST"] = "127.0.0.1"
        env["EPICS_CA_AUTO_ADDR_LIST"] = "NO"
    return env
