"""Start the real IOC as a subprocess and drive it through pyepics (libca).

The launcher, waiting and the process checks live in :mod:`devsupport` (the
bench and the demo use them too); this module keeps the names the tests import,
and the helpers only tests need.
"""

from __future__ import annotations

import codecs
import os
import subprocess
import sys
from pathlib import Path

import psutil

from devsupport import ioc as _ioc
from devsupport.ioc import STARTUP_TIMEOUT
from devsupport.processes import process_gone
from devsupport.waiting import wait_for

__all__ = ["STARTUP_TIMEOUT", "Ioc", "caget_text", "keeper_of", "process_gone", "wait_for"]


class Ioc(_ioc.Ioc):
    """The IOC under test; with ``BGRSCRPT_STOCK_CAPROTO=1``, caproto's plain server
    instead, to see a caproto-fix test fail."""

    def server_module(self) -> str:
        stock = os.environ.get("BGRSCRPT_STOCK_CAPROTO") == "1"
        return "tests.stock_caproto_ioc" if stock else "bgrscrpt_ioc"


def caget_text(ioc: Ioc, suffix: str) -> str:
    """The PV as EPICS base's ``caget -S`` gets it: what a C client (CS-Studio) sees.

    caget prints the C string escaped (a backslash as ``\\\\``, a newline as ``\\n``,
    other bytes as ``\\xNN``); undone here. No caRepeater on PATH: one started by
    caget would outlive the test.
    """
    out = subprocess.run(
        [str(Path(sys.executable).parent / "caget"), "-t", "-S", "-w", "5", ioc.pv(suffix)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    printed = out.stdout.removesuffix(b"\n")
    return codecs.escape_decode(printed)[0].decode("utf-8")  # type: ignore[attr-defined]


def keeper_of(ioc: Ioc) -> psutil.Process:
    """The IOC's keeper process (the parent of its scripts)."""
    assert ioc.proc is not None
    found = [
        child
        for child in psutil.Process(ioc.proc.pid).children()
        if any(arg.endswith("bgrscrpt_ioc/supervisor/keeper.py") for arg in child.cmdline())
    ]
    assert len(found) == 1, found
    return found[0]
