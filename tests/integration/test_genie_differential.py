"""The IOC's genie_python answers as IBEX's does: the same calls through both, compared.

IBEX's genie_python (PyPI ``genie_python``, on libca through CaChannel; the test
extra installs it) is the oracle. Each implementation gets a fresh copy of the
same simulated instrument (``tests/sim_instrument.py``: blocks as IBEX's gateway
serves them, the block server's names, the DAE, PVs of every CA type) on a CA
port of its own, and ``tests/genie_probe.py`` runs the same calls in the same
order through each. Every call's result type and repr, what it printed on
stdout, and the exception line of any traceback it printed must be identical.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bgrscrpt_ioc.supervisor.env import kit_root
from tests.sim_instrument import Simulation

ROOT = Path(__file__).resolve().parents[2]
PROBE = ROOT / "tests" / "genie_probe.py"

real_genie = pytest.importorskip("genie_python", reason="the test extra installs genie_python")

# In order: some calls change what later ones read.
CALLS = [
    # Names: the prefix, and a block's PV in capitals as IBEX's gateway serves it.
    'g.prefix_pv_name("CS:SB:T1")',
    'g.adv.get_pv_from_block("Temp_Sample")',
    # Names Channel Access cannot carry: refused as CaChannel refuses them, and every
    # channel after them still connects (the reads below are the first of theirs).
    "g.get_pv(None)",
    "g.get_pv(123)",
    'g.get_pv("")',
    'g.get_pv("A" + chr(0) + "B")',
    'g.get_pv("x" * 1008)',
    "g.set_pv(5, 1)",
    "W.pv_exists(None)",
    'g.get_pv("R" * 60, is_local=True)',
    # Reads: values and their Python types.
    'g.get_pv("SIM:LONG", is_local=True)',
    'g.get_pv("SIM:FLOAT", is_local=True)',
    'g.get_pv("SIM:STRING", is_local=True)',
    'g.get_pv("SIM:TEXT", is_local=True)',
    'g.get_pv("SIM:ARRAY", is_local=True)',
    'g.get_pv("SIM:ARRAY", is_local=True, use_numpy=True)',
    # Enums and severities read as their names.
    'g.get_pv("SIM:ENUM", is_local=True)',
    'g.get_pv("DAE:RUNSTATE", is_local=True)',
    'g.get_pv(P + "DAE:RUNSTATE", is_local=True)',
    'g.get_pv("CS:SB:T1.SEVR", is_local=True)',
    'g.get_pv("CS:SB:T1.EGU", is_local=True)',
    # to_string on a number: read as DBR_CHAR, as genie_python does.
    'g.get_pv("SIM:LONG", to_string=True, is_local=True)',
    'g.get_pv("SIM:ARRAY", to_string=True, is_local=True)',
    # The wrapper InstrumentScripts' plot calls, use_numpy included.
    'W.get_pv_value(P + "SIM:ARRAY")',
    'W.get_pv_value(P + "SIM:ARRAY", use_numpy=True)',
    'W.get_pv_value(P + "SIM:ARRAY", use_numpy=False)',
    'W.get_pv_value(P + "DAE:RUNSTATE", timeout=1)',
    'W.get_pv_value(P + "CS:SB:T1.SEVR")',
    'W.pv_exists(P + "SIM:LONG")',
    'W.pv_exists(P + "NOT:THERE", 0.2)',
    # A missing PV: the wrapper raises; genie prints the traceback and returns None.
    'W.get_pv_value(P + "NOT:THERE")',
    'g.get_pv("NOT:THERE", is_local=True)',
    # Writes: enum states by name in any case, a bad state, no doubled prefix, None.
    'g.set_pv("SIM:ENUM", "three", is_local=True, wait=True)',
    'g.get_pv("SIM:ENUM", is_local=True)',
    'g.set_pv("SIM:ENUM", "Four", is_local=True)',
    'W.set_pv_value(P + "SIM:ENUM", "nope")',
    'g.set_pv("SIM:ENUM", 0, is_local=True, wait=True)',
    'g.get_pv("SIM:ENUM", is_local=True)',
    'g.set_pv(P + "SIM:LONG", 43, is_local=True, wait=True)',
    'g.get_pv("SIM:LONG", is_local=True)',
    'g.set_pv("SIM:LONG", "44", is_local=True, wait=True)',
    'g.get_pv("SIM:LONG", is_local=True)',
    'g.set_pv("SIM:LONG", None, is_local=True)',
    'g.get_pv("SIM:LONG", is_local=True)',
    'g.set_pv("SIM:TEXT", "new text", is_local=True, wait=True)',
    'g.get_pv("SIM:TEXT", is_local=True)',
    # Text that fills a char waveform, or more: every element is written, no NUL.
    'g.set_pv("SIM:TEXT", "z" * 100, is_local=True, wait=True)',
    'g.get_pv("SIM:TEXT", is_local=True)',
    'g.set_pv("SIM:TEXT", "x" * 101, is_local=True, wait=True)',
    'g.get_pv("SIM:TEXT", is_local=True)',
    # Values of the wrong kind, converted as CaChannel converts them (not always kindly).
    'g.set_pv("SIM:LONG", 7.9, is_local=True, wait=True)',
    'g.get_pv("SIM:LONG", is_local=True)',
    'g.set_pv("SIM:LONG", 2**31, is_local=True, wait=True)',
    'g.get_pv("SIM:LONG", is_local=True)',
    'g.set_pv("CS:SB:T1", "12.5", is_local=True, wait=True)',
    'g.get_pv("CS:SB:T1", is_local=True)',
    'g.set_pv("CS:SB:T1", "abc", is_local=True, wait=True)',
    'g.set_pv("SIM:ARRAY", [1, 2.5, True, 9], is_local=True, wait=True)',
    'g.get_pv("SIM:ARRAY", is_local=True)',
    'g.set_pv("SIM:ENUM", 70000, is_local=True, wait=True)',
    # A put the server refuses (an index past the states): a put callback with its
    # error, not a wait for ever.
    'g.set_pv("SIM:ENUM", 65535, is_local=True, wait=True)',
    'g.get_pv("SIM:ENUM", is_local=True)',
    'g.set_pv("SIM:STRING", 12, is_local=True, wait=True)',
    'g.get_pv("SIM:STRING", is_local=True)',
    # A DBR_STRING holds 39 characters: a longer text is refused, nothing written.
    'g.set_pv("SIM:STRING", "y" * 39, is_local=True, wait=True)',
    'g.get_pv("SIM:STRING", is_local=True)',
    'g.set_pv("SIM:STRING", "w" * 40, is_local=True, wait=True)',
    'g.get_pv("SIM:STRING", is_local=True)',
    'g.set_pv("SIM:ENUM", 1.0, is_local=True, wait=True)',
    'g.get_pv("SIM:ENUM", is_local=True)',
    'g.set_pv("SIM:RO", 1, is_local=True)',
    # Blocks: the names, cget's keys and case, a block of the configuration that
    # no IOC serves (connected False), one that does not exist (None).
    "g.get_blocks()",
    'g.cget("T1")',
    'g.cget("t1")',
    'g.cget("Temp_Sample")',
    'g.cget("ZF_STATUS")',
    'g.cget("Ghost")',
    'g.cget("Nope")',
    'g.get_block_units("T1")',
    'g.get_block_units("ZF_STATUS")',
    # cset: one block, several, run control, its errors.
    'g.cset("T1", 5)',
    'g.cget("T1")["value"]',
    "g.cset(T1=6, Temp_Sample=7)",
    'g.cshow("Temp_Sample")',
    'g.cset("T1", runcontrol=True, lowlimit=8, highlimit=4)',
    'g.cget("T1")',
    'g.cset("Nope", 1)',
    "g.cset()",
    'g.cset("T1", 1, 2)',
    # Alarms: an enum block in fault and INVALID.
    'g.set_pv("CS:SB:ZF_STATUS", "fault", is_local=True, wait=True)',
    'g.set_pv("CS:SB:ZF_STATUS:SIM:SEVR", 3, is_local=True, wait=True)',
    'g.cget("ZF_STATUS")',
    'g.cget("ZF_STATUS")["value"] in ["FAULT"]',
    'g.get_pv("CS:SB:ZF_STATUS.SEVR", is_local=True)',
    'g.check_alarms("T1", "ZF_STATUS", "Nope")',
    "g.cshow()",
    # The run.
    "g.get_runstate()",
    "g.get_runnumber()",
    "g.get_rb()",
    "g.get_title()",
    "g.get_period()",
    "g.get_frames()",
    "g.get_uamps()",
    "g.get_time_since_begin()",
    # The waitfor family: its messages, limits, timeouts and errors.
    "g.waitfor_time(seconds=0.2)",
    "g.waitfor_time()",
    "g.waitfor_time(seconds=-1)",
    'g.waitfor_block("T1", 6)',
    'g.waitfor_block("T1", lowlimit=7, highlimit=5)',
    'g.waitfor_block("T1", 99, maxwait=0.3)',
    "g.waitfor(T1=6)",
    "g.waitfor(Nope=6)",
    "g.waitfor(seconds=0.1, quiet=True)",
    'g.waitfor_runstate("SETUP", maxwaitsecs=1)',
    "g.waitfor_frames()",
    "g.waitfor_frames(1000)",
    # genie's toggles: raise instead of print, and back.
    "g.toggle.cset_verbose(False)",
    "g.toggle.exceptions_raised(True)",
    "g.waitfor_time()",
    "g.toggle.exceptions_raised(False)",
    "g.my_pv_prefix",
    # Names InstrumentScripts imports, and the exceptions' classes.
    '{k: DAE_PVS_LOOKUP[k] for k in ("runstate", "runnumber", "title", "rbnum", "uamps")}',
    "[c.__name__ for c in E.UnableToConnectToPVException.__mro__[:3]]",
    "[c.__name__ for c in E.InvalidEnumStringException.__mro__[:3]]",
    "[c.__name__ for c in E.WriteAccessException.__mro__[:3]]",
    'str(E.UnableToConnectToPVException("X", "why"))',
    # Last, as they change the prefix: IBEX's names for instruments and test machines.
    # ("~": what set_instrument prints differs, IBEX's naming its database; see docs/scripts.md.)
    '~g.set_instrument("ndxdemo", import_instrument_init=False)',
    'g.prefix_pv_name("")',
    "g.adv.get_instrument()",
    "g.adv.get_instrument_full_name()",
    '~g.set_instrument("IN:LARMOR:", import_instrument_init=False)',
    'g.prefix_pv_name("")',
    '~g.set_instrument("demo", import_instrument_init=False)',
    'g.prefix_pv_name("")',
    '~g.set_instrument("ndw1234567", import_instrument_init=False)',
    'g.prefix_pv_name("")',
    "g.adv.get_instrument_full_name()",
]


def run_probe(prefix: str, port: int, ours: bool) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EPICS_CA")}
    env.update(
        EPICS_CA_AUTO_ADDR_LIST="NO",
        EPICS_CA_ADDR_LIST=f"127.0.0.1:{port}",
        EPICS_CA_REPEATER_PORT=os.environ["EPICS_CA_REPEATER_PORT"],
    )
    env.pop("MYPVPREFIX", None)
    env.pop("PYTHONPATH", None)
    if ours:
        env["PYTHONPATH"] = str(kit_root() / "compat")
    return subprocess.Popen(
        [sys.executable, str(PROBE), prefix, *CALLS],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def results(proc: subprocess.Popen) -> tuple[dict, list[dict]]:
    out, err = proc.communicate(timeout=110)
    assert proc.returncode == 0, err
    lines = [json.loads(line) for line in out.splitlines()]
    return lines[0], lines[1:]


def test_the_same_calls_answer_the_same(port_pool, test_tag):
    # IBEX derives the prefix from an instrument name of at most 8 characters.
    prefix = f"TE:G{uuid.uuid4().hex[:6].upper()}:"
    sim = dict(enum_blocks=["ZF_STATUS"], ghosts=["Ghost"], extras=True, instlist=True)
    real_sim = Simulation(prefix, port_pool.take(), ["T1", "Temp_Sample"], moving=False, **sim)
    our_sim = Simulation(prefix, port_pool.take(), ["T1", "Temp_Sample"], moving=False, **sim)
    try:
        real_sim.start()
        our_sim.start()
        real_proc = run_probe(prefix, real_sim.port, ours=False)
        our_proc = run_probe(prefix, our_sim.port, ours=True)
        real_where, real = results(real_proc)
        our_where, ours = results(our_proc)
    finally:
        real_sim.stop()
        our_sim.stop()
    assert Path(our_where["where"]).is_relative_to(kit_root() / "compat")
    assert Path(real_where["where"]).parent == Path(real_genie.__file__).parent
    assert our_where["prefix_before"] == real_where["prefix_before"] == "X"
    assert len(ours) == len(real) == len(CALLS)
    for record in (*real, *ours):
        if record["call"].startswith("~"):
            record.pop("out")
    different = [
        f"{r['call']}\n  IBEX: {r}\n  ours: {o}" for r, o in zip(real, ours, strict=True) if r != o
    ]
    assert not different, "\n".join(different)
    # And the oracle says what the issue says it does (so the comparison is not vacuous).
    by_call = {r["call"]: r for r in real}
    assert by_call['g.get_pv("DAE:RUNSTATE", is_local=True)']["repr"] == "'SETUP'"
    assert by_call['g.get_pv("CS:SB:ZF_STATUS.SEVR", is_local=True)']["repr"] == "'INVALID'"
    assert by_call['g.cget("ZF_STATUS")["value"] in ["FAULT"]']["repr"] == "True"
    assert by_call['g.cget("Nope")']["repr"] == "None"
    assert by_call['g.cget("Nope")']["err"].startswith("Current blocks are")
    assert "UnableToConnectToPVException" in by_call['g.get_pv("NOT:THERE", is_local=True)']["err"]
