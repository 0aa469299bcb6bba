"""The part of ``genie_python.genie`` that background scripts use, over Channel Access.

Usage, as on an instrument::

    from genie_python import genie as g

    g.set_instrument(None)          # the PV prefix from $MYPVPREFIX
    g.cget("Temp_Sample")           # {"name", "value", "unit", "connected", "alarm"}
    g.cset("Temp_SP", 300)
    g.get_pv("DAE:RUNSTATE", to_string=True, is_local=True)

Blocks are the PVs ``$(P)CS:SB:<block>``; the run number and state are
``$(P)DAE:RUNNUMBER`` and ``$(P)DAE:RUNSTATE``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from genie_python.channel_access_exceptions import UnableToConnectToPVException
from genie_python.genie_cachannel_wrapper import DEFAULT_TIMEOUT, read, write

__all__ = [
    "adv",
    "cget",
    "cset",
    "get_pv",
    "get_runnumber",
    "get_runstate",
    "prefix_pv_name",
    "set_instrument",
    "set_pv",
]

BLOCK_PREFIX = "CS:SB:"
RUNSTATE_PV = "DAE:RUNSTATE"
RUNNUMBER_PV = "DAE:RUNNUMBER"
ALARM_NAMES = ("NO_ALARM", "MINOR", "MAJOR", "INVALID")

# As in genie_python, the prefix is the environment's until set_instrument says otherwise.
_prefix = os.environ.get("MYPVPREFIX", "")


def set_instrument(pv_prefix: str | None = None, globs: Any = None, import_instrument_init=True):
    """Choose the instrument: ``None`` takes the PV prefix from ``$MYPVPREFIX``.

    A given prefix is used as is, with a ``:`` added when it does not end in one.
    ``globs`` and ``import_instrument_init`` are accepted for compatibility.
    """
    global _prefix
    if pv_prefix is None:
        _prefix = os.environ.get("MYPVPREFIX", "")
    else:
        _prefix = pv_prefix if pv_prefix.endswith(":") else pv_prefix + ":"


def prefix_pv_name(name: str) -> str:
    """``name`` with the instrument prefix in front, e.g. ``IN:DEMO:CS:SB:T1``."""
    return _prefix + name


def get_pv(name: str, to_string: bool = False, is_local: bool = False, use_numpy=None) -> Any:
    """The value of a PV; ``is_local`` puts the instrument prefix in front.

    Raises UnableToConnectToPVException when the PV does not answer.
    """
    return read(prefix_pv_name(name) if is_local else name, DEFAULT_TIMEOUT, to_string)["value"]


def set_pv(name: str, value: Any, wait: bool = False, is_local: bool = False) -> None:
    """Write ``value`` to a PV; ``is_local`` puts the instrument prefix in front."""
    write(prefix_pv_name(name) if is_local else name, value, wait=wait)


def cget(block: str) -> dict:
    """The block's ``name``, ``value``, ``unit``, ``connected`` and ``alarm``.

    A block that does not answer gives ``connected=False`` and ``value=None``
    instead of raising, so a script that polls blocks keeps running.
    """
    try:
        reading = read(prefix_pv_name(BLOCK_PREFIX + block), timeout=2.0)
    except UnableToConnectToPVException:
        return {"name": block, "value": None, "unit": "", "connected": False, "alarm": "INVALID"}
    severity = reading["severity"]
    alarm = ALARM_NAMES[severity] if 0 <= severity < len(ALARM_NAMES) else "INVALID"
    return {
        "name": block,
        "value": reading["value"],
        "unit": reading["units"],
        "connected": True,
        "alarm": alarm,
    }


def cset(*args: Any, wait: bool = False, **kwargs: Any) -> None:
    """Set blocks: ``cset("T_SP", 300)`` or ``cset(T_SP=300, B_SP=0.1)``.

    Writes the block's setpoint PV ``$(P)CS:SB:<block>:SP`` where one exists,
    else the block PV itself (a block pointing straight at a setpoint).
    """
    if len(args) == 2:
        kwargs = {args[0]: args[1], **kwargs}
    elif args:
        raise ValueError("cset takes a block and a value, or block=value pairs")
    for block, value in kwargs.items():
        base = prefix_pv_name(BLOCK_PREFIX + block)
        try:
            write(base + ":SP", value, wait=wait, timeout=1.0)
        except UnableToConnectToPVException:
            write(base, value, wait=wait)


def get_runnumber() -> str:
    """The current run number as genie_python gives it: a string, e.g. ``"00012345"``."""
    return str(get_pv(RUNNUMBER_PV, to_string=True, is_local=True))


def get_runstate() -> str:
    """The DAE run state as a string, e.g. ``"SETUP"``, ``"RUNNING"``."""
    return str(get_pv(RUNSTATE_PV, to_string=True, is_local=True))


class _Advanced:
    """``g.adv``: the advanced commands background scripts use."""

    @staticmethod
    def open_plot_window(is_primary: bool = True, host: Any = None, figures: Any = None) -> str:
        """Show where this script's live plot is served (the IBEX GUI opens a window here).

        The URL goes to the slot's PLOT_URL and is returned; an empty string when
        the script serves no plot yet.
        """
        try:
            from bgrscrpt_ioc.plot import server

            url = server.publish_current_url()
        except Exception as exc:  # the plot is a convenience: never break the script
            print(f"open_plot_window: {exc}", file=sys.stderr)
            return ""
        if url:
            print(f"plot window: {url}")
        else:
            print("open_plot_window: this script serves no plot yet", file=sys.stderr)
        return url


adv = _Advanced()
