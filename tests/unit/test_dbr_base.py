"""Every PV, and its record fields, read as every DBR type: the same as EPICS base.

The oracle is EPICS base itself: an EPICS base IOC loads ``db_templates/``
(the same records), is given the same values, and libca (``tests/dbr_reader.py``)
reads every record and field of both servers as every DBR type, 0 (STRING)
to 34 (CTRL_DOUBLE): values, alarm status and severity, units, precision,
display, alarm and control limits, enum strings, and failures (ECA_GETFAIL
where base refuses a conversion). Anything but the time stamp must be equal.

Three rounds of values (three slots and three watches) reach the conversions
that matter: strings that are partly, wholly or not numbers, integers beyond
16 and 8 bits, doubles against PREC, UTF-8 in char waveforms, empty waveforms.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bgrscrpt_ioc.ca.pvdb import build_pvdb
from bgrscrpt_ioc.ca.server import IocContext
from bgrscrpt_ioc.ca.slot_pvs import TEXT_LIMITS, SlotView, char_waveform_text
from bgrscrpt_ioc.ca.watch_pvs import MSG_LIMIT, WatchView, build_watch_pvs, names_text
from devsupport.epics_base import base_ioc_environment
from devsupport.ports import free_ca_port, free_loopback_port
from tests.unit.ca_server import run_client, serving

pytest.importorskip("epicscorelibs")

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ROOT / "db_templates"
OURS, BASE = "OURS:", "BASE:"  # the same length: NAME fields compare after the swap
DBR_TYPES = range(35)

ROUNDS = [
    (
        "BGRSCRPT_01",
        SlotView(
            status=6,  # FATAL: STATE MAJOR
            heartbeat=70000,  # beyond 16 bits
            pid=4194303,
            start_cnt=3,
            exit_code=-9,
            uptime=12,
            registered=True,
            autorestart=2,
            watchdog=12.75,  # PREC 1: "12.8"
            cpu=187.25,
            rss=2048.46,
            nproc=70000,
            memory_max=1536.0,
            script="/x/background_script.py",
            msg="exited with code 1: ZeroDivisionError: division by zero",
            log="line 1\nline 2\n",
            plot_url="",  # an empty waveform
        ),
        "W1",
        WatchView(
            state=5,  # FAILED: MINOR
            alarm=3,  # INVALID: MAJOR
            enable=True,
            restart_cnt=2,
            last_restart="2026-11-26T03:08:41.432",  # 2026 as a number, too big for CHAR
            msg="restarted W1, recovered in 1.4 s",
        ),
    ),
    (
        "BGRSCRPT_02",
        SlotView(
            status=3,  # BACKOFF: STATE MINOR
            heartbeat=2147483647,
            pid=0,
            start_cnt=65536,
            exit_code=-2147483648,
            uptime=255,
            registered=False,
            autorestart=0,
            watchdog=0.05,
            cpu=0.04,
            rss=0.5,
            nproc=1,
            script="/instrument/scripts/background_script2.py",
            msg="température 20 °C — ok",  # UTF-8: bytes above 127 are negative CHARs
            log="x" * 4000,
            plot_url="http://127.0.0.1:8989/",
        ),
        "W2",
        WatchView(
            state=6,  # LOCKOUT: MAJOR
            alarm=4,  # DISCONNECTED
            enable=False,
            restart_cnt=0,
            last_restart="",  # reads 0 as every number
            msg="",
        ),
    ),
    (
        "BGRSCRPT_03",
        SlotView(
            status=2,
            heartbeat=-1,
            pid=32768,
            start_cnt=128,
            exit_code=1,
            uptime=65535,
            autorestart=1,
            watchdog=86400.0,
            script="",
            msg="",
            log="",
        ),
        "W3",
        WatchView(state=1, alarm=0, enable=True, restart_cnt=127, last_restart="42", msg="x"),
    ),
]
IOC_HEARTBEAT, IOC_UPTIME = 123456, 7

FIELDS = {
    # Every record: identity, alarm state, processing.
    "common": [
        "NAME", "RTYP", "DESC", "ASG", "SCAN", "PINI", "PHAS", "EVNT", "PRIO",
        "STAT", "SEVR", "NSTA", "NSEV", "ACKS", "ACKT", "UDF", "UDFS",
        "DISV", "DISA", "DISS", "TSE", "TPRO", "PROC", "PACT", "PUTF", "RPRO",
        "FLNK", "SDIS", "TSEL", "SIOL", "SIML",  # links (empty)
    ],
    "longin": ["INP", "EGU", "HOPR", "LOPR", "HIHI", "HIGH", "LOW", "LOLO",
               "HHSV", "HSV", "LSV", "LLSV", "HYST", "ADEL", "MDEL"],
    "ao": ["DOL", "OUT", "EGU", "PREC", "HOPR", "LOPR", "DRVH", "DRVL", "HIHI", "HIGH", "LOW",
           "LOLO", "HHSV", "HSV", "LSV", "LLSV", "HYST", "ADEL", "MDEL", "OMSL", "OIF"],
    "bo": ["DOL", "OUT", "ZNAM", "ONAM", "ZSV", "OSV", "COSV", "HIGH", "OMSL", "IVOA"],
    "bi": ["INP", "ZNAM", "ONAM", "ZSV", "OSV", "COSV"],
    "mbbi": ["INP", "ZRST", "ONST", "TWST", "THST", "FRST", "FVST", "SXST", "SVST",
             "ZRSV", "ONSV", "TWSV", "THSV", "FRSV", "FVSV", "SXSV", "UNSV", "COSV", "NOBT"],
    "mbbo": ["DOL", "OUT", "ZRST", "ONST", "TWST", "THST", "ZRSV", "ONSV", "TWSV", "UNSV",
             "COSV", "NOBT", "OMSL", "IVOA"],
    "stringin": ["INP", "APST", "MPST"],
    "waveform": ["INP", "EGU", "PREC", "HOPR", "LOPR", "FTVL", "NELM", "NORD", "APST", "MPST"],
}  # fmt: skip
# One record of each type has its fields read as every DBR type.
FIELD_RECORDS = {
    "longin": "BGRSCRPT_01:PID",
    "stringin": "BGRSCRPT:WATCH:W1:LAST_RESTART",
    "bo": "BGRSCRPT_01:START",
    "bi": "BGRSCRPT_01:REGISTERED",
    "mbbi": "BGRSCRPT_01:STATUS",
    "mbbo": "BGRSCRPT_01:AUTORESTART",
    "ao": "BGRSCRPT_01:WATCHDOG",
    "waveform": "BGRSCRPT_01:MSG",
}


class _Controller:
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def restart(self) -> None: ...
    def set_autorestart(self, mode: int) -> None: ...
    def set_watchdog(self, seconds: float) -> None: ...
    def set_enabled(self, enabled: bool) -> None: ...
    def restart_now(self) -> None: ...
    def set_dry_run(self, dry_run: bool) -> None: ...


def our_pvdb(prefix: str) -> dict:
    ctl = _Controller()
    watches = build_watch_pvs(prefix, [(w, ctl, view) for _, _, w, view in ROUNDS], ctl)
    pvdb, ioc, _ = build_pvdb(prefix, [(slot, ctl, view) for slot, view, _, _ in ROUNDS], watches)
    ioc.heartbeat._data["value"] = IOC_HEARTBEAT
    ioc.uptime._data["value"] = IOC_UPTIME
    return pvdb


def _text(text: str, limit: int, *, keep_end: bool = False) -> list[int]:
    """The bytes a char waveform holds for ``text``, as the IOC writes them."""
    return list(char_waveform_text(text, limit, keep_end=keep_end).encode("latin-1"))


def base_puts(prefix: str) -> list[tuple[str, object]]:
    """(PV, value) puts that give the base IOC's records the values ours are given.

    An empty list is a waveform left empty (processed, but never written).
    """
    puts: list[tuple[str, object]] = [
        (f"{prefix}BGRSCRPT:HEARTBEAT", IOC_HEARTBEAT),
        (f"{prefix}BGRSCRPT:UPTIME", IOC_UPTIME),
        (f"{prefix}BGRSCRPT:VERSION", __import__("bgrscrpt_ioc").__version__),
        (f"{prefix}BGRSCRPT:MSG", []),
        (f"{prefix}BGRSCRPT:LOOP_LAG", 0.0),
        (f"{prefix}BGRSCRPT:WATCH:DRYRUN", 0),
        (f"{prefix}BGRSCRPT:WATCH:NAMES", _text(names_text([w for *_, w, _ in ROUNDS]), 8192)),
    ]
    for slot, view, watch, wview in ROUNDS:
        p = f"{prefix}{slot}:"
        puts += [(p + name, 0) for name in ("START", "STOP", "RESTART")]
        puts += [
            (p + "STATUS", view.status),
            (p + "HEARTBEAT", view.heartbeat),
            (p + "PID", view.pid),
            (p + "START_CNT", view.start_cnt),
            (p + "EXIT_CODE", view.exit_code),
            (p + "UPTIME", view.uptime),
            (p + "REGISTERED", int(view.registered)),
            (p + "AUTORESTART", view.autorestart),
            (p + "WATCHDOG", view.watchdog),
            (p + "CPU", view.cpu),
            (p + "RSS", view.rss),
            (p + "NPROC", view.nproc),
            (p + "MEMORY_MAX", view.memory_max),
        ]
        for name, limit in TEXT_LIMITS.items():
            text = getattr(view, name)
            puts.append((p + name.upper(), _text(text, limit, keep_end=name == "log")))
        w = f"{prefix}BGRSCRPT:WATCH:{watch}:"
        puts += [
            (w + "STATE", wview.state),
            (w + "ALARM", wview.alarm),
            (w + "ENABLE", int(wview.enable)),
            (w + "RESTART", 0),
            (w + "RESTART_CNT", wview.restart_cnt),
            (w + "LAST_RESTART", wview.last_restart),
            (w + "MSG", _text(wview.msg, MSG_LIMIT)),
        ]
    return puts


PUT_AND_READ = r"""
import json, sys
import numpy as np
import epics
from tests.dbr_reader import read_all
puts, requests = json.loads(sys.stdin.read())
for pv, value in puts:
    if isinstance(value, list):
        if not value:  # leave it empty: process it, so it is defined like ours
            assert epics.caput(pv + ".PROC", 1, wait=True, timeout=10), pv
            continue
        value = np.array(value, dtype=np.uint8)
    assert epics.caput(pv, value, wait=True, timeout=10), pv
# Base sets a bo's or mbb's VAL when one of its string fields is read as an enum
# (see string_as_state): read those last, when nothing else is left to read.
last = [tuple(r) for r in requests if "." in r[0] and r[1] % 7 == 3]
first = [tuple(r) for r in requests if not ("." in r[0] and r[1] % 7 == 3)]
results = read_all(first)
results.update(read_all(last))
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def base_ioc():
    """An EPICS base IOC serving the templates with prefix BASE:; yields its CA port."""
    port = free_ca_port()
    env = {
        **base_ioc_environment(os.environ, port, free_loopback_port()),
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
    }
    args = [sys.executable, "-m", "epicscorelibs.ioc"]
    args += ["-m", f"P={BASE}", "-d", str(TEMPLATES / "bgrscrpt_ioc.db")]
    args += ["-m", f"P={BASE}", "-d", str(TEMPLATES / "bgrscrpt_watches.db")]
    for slot, _, watch, _ in ROUNDS:
        args += ["-m", f"P={BASE},SLOT={slot}", "-d", str(TEMPLATES / "bgrscrpt.db")]
        args += ["-m", f"P={BASE},WATCH={watch}", "-d", str(TEMPLATES / "bgrscrpt_watch.db")]
    # The IOC shell is a Python console; "exit()" ends it (it ignores SIGTERM).
    proc = subprocess.Popen(
        args,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        yield port
    finally:
        try:
            proc.communicate("exit()\n", timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def requests_for(prefix: str, pvdb_names: list[str]) -> list[tuple[str, int]]:
    out = [(prefix + name, t) for name in pvdb_names for t in DBR_TYPES]
    for record_type, name in FIELD_RECORDS.items():
        for field in FIELDS["common"] + FIELDS[record_type]:
            out += [(f"{prefix}{name}.{field}", t) for t in DBR_TYPES]
    return out


def _normalise(result: dict) -> dict:
    text = json.dumps(result).replace(OURS, BASE)
    return json.loads(text)


ENUM_RECORDS = {FIELD_RECORDS[kind] for kind in ("bo", "bi", "mbbi", "mbbo")}


def _value_undefined(name: str, dbr_type: int, base: dict) -> bool:
    """Base answers a string field of a bo/bi/mbb read as an enum, when the text is a
    state name, with whatever its buffer held (3840, 256 ...): only the rest compares."""
    record, _, field = name.partition(".")
    return bool(field) and record in ENUM_RECORDS and dbr_type % 7 == 3 and base["native"] == 0


async def test_every_pv_and_field_reads_as_epics_base_reads_it(base_ioc, monkeypatch):
    pvdb = our_pvdb(OURS)
    names = [name.removeprefix(OURS) for name in pvdb if "." not in name]
    async with serving(pvdb, monkeypatch, context=IocContext) as (ca_env, _):
        ours_port = int(ca_env["EPICS_CA_SERVER_PORT"])
        env = {**ca_env, "EPICS_CA_ADDR_LIST": f"127.0.0.1:{ours_port} 127.0.0.1:{base_ioc}"}
        requests = requests_for(OURS, names) + requests_for(BASE, names)
        payload = json.dumps([base_puts(BASE), requests])
        results = await run_client(PUT_AND_READ, env=env, stdin=payload, timeout=100)
    differences: dict[str, list[int]] = {}
    example: dict[str, str] = {}
    for name, dbr_type in requests_for("", names):
        ours = _normalise(results[f"{OURS}{name}|{dbr_type}"])
        base = results[f"{BASE}{name}|{dbr_type}"]
        if _value_undefined(name, dbr_type, base) and "value" in base and "value" in ours:
            ours["value"] = base["value"] = None
        if ours != base:
            differences.setdefault(name, []).append(dbr_type)
            example.setdefault(name, f"as {dbr_type}:\n    ours {ours}\n    base {base}")
    report = [f"{name} as {types}, e.g. {example[name]}" for name, types in differences.items()]
    if os.environ.get("DBR_BASE_REPORT"):
        Path(os.environ["DBR_BASE_REPORT"]).write_text("\n".join(report))
    assert not differences, f"{len(differences)} PVs differ:\n" + "\n".join(report[:30])
