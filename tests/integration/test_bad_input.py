"""Bad input over Channel Access: refused with a clear error, and nothing changes.

Every check drives the real IOC through libca. pyepics' ``caput(wait=True)``
ignores the status of a put callback, so :func:`put_status` calls
``ca_array_put_callback`` itself and returns what the server answered
(ECA_PUTFAIL for a refused value) or what libca refused before sending
(ECA_NOWTACCESS for a channel the client may not write). Reads that check a
value did not change use ``use_monitor=False``: pyepics otherwise answers from
its monitor cache, which may lag behind the server.
"""

from __future__ import annotations

import ctypes
import sqlite3
import threading
from pathlib import Path
from typing import Any

from epics import ca, dbr

from tests.integration.conftest import FAST_SETTINGS, write_script
from tests.integration.harness import Ioc, process_gone, wait_for

ECA_NORMAL = 1
ECA_PUTFAIL = 160
ECA_NOWTACCESS = 376

_CALLBACKS: list[Any] = []  # ctypes callbacks must outlive a completion that comes late

QUIET_SCRIPT = """
import time
print("up", flush=True)
while True:
    time.sleep(0.2)
"""

STABLE_PVS = (
    "START", "STOP", "RESTART", "STATUS", "PID", "START_CNT", "EXIT_CODE", "REGISTERED",
    "AUTORESTART", "WATCHDOG", "SCRIPT", "MSG", "LOG", "PLOT_URL",
    "START.SEVR", "AUTORESTART.SEVR", "WATCHDOG.SEVR", "WATCHDOG.STAT", "STATUS.SEVR",
)  # fmt: skip
"""A slot's PVs that hold still while nothing happens (HEARTBEAT and UPTIME count)."""


def put_status(pvname: str, value: Any, ftype: int, timeout: float = 5.0) -> int:
    """Put ``value`` as DBR type ``ftype`` with a completion callback; return the CA status."""
    chid = ca.create_channel(pvname, connect=True)
    assert ca.connect_channel(chid, timeout=timeout), f"{pvname} did not connect"
    done = threading.Event()
    box: dict[str, int] = {}

    def completed(args: Any) -> None:
        box["status"] = int(args.status)
        done.set()

    callback = dbr.make_callback(completed, dbr.event_handler_args)
    _CALLBACKS.append(callback)
    if ftype == dbr.STRING:
        data: Any = (dbr.string_t * 1)()
        data[0].value = str(value).encode()
    elif ftype == dbr.DOUBLE:
        data = (ctypes.c_double * 1)(value)
    elif ftype == dbr.LONG:
        data = (ctypes.c_int32 * 1)(value)
    else:
        raise ValueError(f"unsupported DBR type {ftype}")
    status = ca.libca.ca_array_put_callback(ftype, 1, chid, data, callback, None)
    if status != ECA_NORMAL:
        return int(status)  # libca refused it before sending anything
    ca.flush_io()
    assert done.wait(timeout), f"no put completion for {pvname} within {timeout:g} s"
    return box["status"]


def may_write(pvname: str) -> bool:
    """The write access the server granted this client on ``pvname``."""
    chid = ca.create_channel(pvname, connect=True)
    assert ca.connect_channel(chid, timeout=5.0), f"{pvname} did not connect"
    return bool(ca.write_access(chid))


def snapshot(ioc: Ioc, slot: str) -> dict[str, Any]:
    """Fresh reads (not pyepics' monitor cache) of the slot's PVs that hold still."""
    values = {}
    for name in STABLE_PVS:
        value = ioc.get(f"{slot}:{name}", as_string=True, use_monitor=False)
        assert value is not None, f"{slot}:{name} did not answer"
        values[name] = value
    return values


def runs(var_dir: Path, slot: str) -> list[tuple]:
    """The state database's runs of ``slot`` (read-only, beside the running IOC)."""
    db = sqlite3.connect(f"file:{var_dir / 'state.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT id, pid, ended FROM runs WHERE slot = ?", (slot,)).fetchall()
    finally:
        db.close()


def saved_settings(var_dir: Path) -> list[tuple]:
    db = sqlite3.connect(f"file:{var_dir / 'state.sqlite'}?mode=ro", uri=True)
    try:
        return db.execute("SELECT slot, key, value FROM settings ORDER BY slot, key").fetchall()
    finally:
        db.close()


def assert_no_traceback(ioc: Ioc) -> None:
    out = ioc.output()
    assert "Traceback" not in out, out


def running_ioc(make_ioc, config_dir: Path, settings: str = FAST_SETTINGS) -> tuple[Ioc, int]:
    """An IOC whose slot 01 runs QUIET_SCRIPT (RUNNING, LOG settled); returns it and the PID."""
    write_script(config_dir, "background_script.py", QUIET_SCRIPT)
    ioc = make_ioc(settings).start()
    ioc.wait_status("RUNNING")
    wait_for(lambda: "up" in (ioc.get("BGRSCRPT_01:LOG", as_string=True) or ""), 5, "LOG")
    pid = ioc.get("BGRSCRPT_01:PID")
    assert pid > 0
    return ioc, pid


# ---- wrong-typed and out-of-range puts --------------------------------------

COMMAND_BAD_PUTS = [
    ("banana", dbr.STRING),
    ("on", dbr.STRING),  # labels are case-sensitive, as in EPICS
    ("", dbr.STRING),
    ("2", dbr.STRING),  # a whole number names a state, as in EPICS: out of range
    ("1.5", dbr.STRING),
    ("99999999999", dbr.STRING),
    (2, dbr.LONG),
    (-1, dbr.LONG),
    (65535, dbr.LONG),
]
AUTORESTART_BAD_PUTS = [
    ("banana", dbr.STRING),
    ("on failure", dbr.STRING),
    ("3", dbr.STRING),
    (3, dbr.LONG),
    (-1, dbr.LONG),
    (1000, dbr.LONG),
]
WATCHDOG_BAD_PUTS = [
    ("banana", dbr.STRING),
    ("", dbr.STRING),  # caproto alone would read it as 0 and turn the watchdog off
    ("  ", dbr.STRING),
    ("-5", dbr.STRING),
    ("12 s", dbr.STRING),
    (-1.0, dbr.DOUBLE),
    (-1e-9, dbr.DOUBLE),
    (86400.5, dbr.DOUBLE),
    (1e300, dbr.DOUBLE),
    (float("nan"), dbr.DOUBLE),
    (float("inf"), dbr.DOUBLE),
    (float("-inf"), dbr.DOUBLE),
    (-3, dbr.LONG),
    (2_000_000_000, dbr.LONG),
]


def test_bad_puts_to_writable_pvs_are_refused_and_change_nothing(make_ioc, config_dir, tmp_path):
    write_script(config_dir, "background_script2.py", QUIET_SCRIPT)
    ioc, pid = running_ioc(make_ioc, config_dir)
    # Slot 02 stopped, so a START that slipped through would show.
    ioc.wait_status("RUNNING", slot="BGRSCRPT_02")
    ioc.put("BGRSCRPT_02:STOP", 1)
    ioc.wait_status("STOPPED", slot="BGRSCRPT_02")
    before = {slot: snapshot(ioc, slot) for slot in ("BGRSCRPT_01", "BGRSCRPT_02")}
    runs_before = {slot: runs(tmp_path / "var", slot) for slot in ("BGRSCRPT_01", "BGRSCRPT_02")}

    cases = [(f"{slot}:{cmd}", v, t) for slot in ("BGRSCRPT_01", "BGRSCRPT_02")
             for cmd in ("START", "STOP", "RESTART") for v, t in COMMAND_BAD_PUTS]  # fmt: skip
    cases += [("BGRSCRPT_01:AUTORESTART", v, t) for v, t in AUTORESTART_BAD_PUTS]
    cases += [("BGRSCRPT_01:WATCHDOG", v, t) for v, t in WATCHDOG_BAD_PUTS]
    wrong = []
    for name, value, ftype in cases:
        status = put_status(ioc.pv(name), value, ftype)
        if status != ECA_PUTFAIL:
            wrong.append(f"{name} <- {value!r}: {ca.message(status)}")
    assert not wrong, "puts not refused with ECA_PUTFAIL"

    after = {slot: snapshot(ioc, slot) for slot in ("BGRSCRPT_01", "BGRSCRPT_02")}
    assert after == before
    assert ioc.get("BGRSCRPT_01:PID", use_monitor=False) == pid
    assert not process_gone(pid)
    assert {slot: runs(tmp_path / "var", slot) for slot in before} == runs_before
    assert saved_settings(tmp_path / "var") == []  # nothing persisted either
    # Refusals cost one line in the IOC's log per client and minute: the first, with its reason.
    assert_no_traceback(ioc)
    refused = [line for line in ioc.output().splitlines() if " refused: " in line]
    assert len(refused) == 1, refused
    assert "BGRSCRPT_01:START refused" in refused[0] and "'banana'" in refused[0], refused

    # The same client, same channels: a valid put goes through (the check can fail).
    assert put_status(ioc.pv("BGRSCRPT_01:WATCHDOG"), 2.5, dbr.DOUBLE) == ECA_NORMAL
    assert ioc.get("BGRSCRPT_01:WATCHDOG", use_monitor=False) == 2.5
    assert put_status(ioc.pv("BGRSCRPT_01:AUTORESTART"), "Always", dbr.STRING) == ECA_NORMAL
    assert ioc.get("BGRSCRPT_01:AUTORESTART", as_string=True, use_monitor=False) == "Always"
    # A whole number as a string names a state, as with an EPICS record.
    assert put_status(ioc.pv("BGRSCRPT_01:AUTORESTART"), "0", dbr.STRING) == ECA_NORMAL
    assert ioc.get("BGRSCRPT_01:AUTORESTART", as_string=True, use_monitor=False) == "Off"
    assert put_status(ioc.pv("BGRSCRPT_02:START"), "1", dbr.STRING) == ECA_NORMAL
    ioc.wait_status("RUNNING", slot="BGRSCRPT_02")


READ_ONLY_PVS = [
    ("BGRSCRPT_01:STATUS", 0, dbr.LONG),
    ("BGRSCRPT_01:STATUS", "FATAL", dbr.STRING),
    ("BGRSCRPT_01:HEARTBEAT", 0, dbr.LONG),
    ("BGRSCRPT_01:PID", 1, dbr.LONG),
    ("BGRSCRPT_01:START_CNT", 0, dbr.LONG),
    ("BGRSCRPT_01:EXIT_CODE", 3, dbr.LONG),
    ("BGRSCRPT_01:UPTIME", 0, dbr.LONG),
    ("BGRSCRPT_01:REGISTERED", 1, dbr.LONG),
    ("BGRSCRPT_01:SCRIPT", "/bin/sh", dbr.STRING),
    ("BGRSCRPT_01:MSG", "banana", dbr.STRING),
    ("BGRSCRPT_01:LOG", "banana", dbr.STRING),
    ("BGRSCRPT_01:PLOT_URL", "http://evil/", dbr.STRING),
    ("BGRSCRPT:HEARTBEAT", 0, dbr.LONG),
    ("BGRSCRPT:UPTIME", 0, dbr.LONG),
    ("BGRSCRPT:VERSION", "0.0", dbr.STRING),
    # Record fields of writable records are read-only too.
    ("BGRSCRPT_01:START.DESC", "banana", dbr.STRING),
    ("BGRSCRPT_01:START.PROC", 1, dbr.LONG),
    ("BGRSCRPT_01:AUTORESTART.ONST", "banana", dbr.STRING),
    ("BGRSCRPT_01:WATCHDOG.DRVH", 1e9, dbr.DOUBLE),
    ("BGRSCRPT_01:WATCHDOG.DRVL", -1.0, dbr.DOUBLE),
    ("BGRSCRPT_01:STATUS.FFSV", "MAJOR", dbr.STRING),
]


def test_puts_to_read_only_pvs_are_refused(make_ioc, config_dir):
    ioc, pid = running_ioc(make_ioc, config_dir)
    before = snapshot(ioc, "BGRSCRPT_01")
    fields = {
        name: ioc.get(name, as_string=True, use_monitor=False) for name, _, _ in READ_ONLY_PVS
    }
    wrong = []
    for name, value, ftype in READ_ONLY_PVS:
        if may_write(ioc.pv(name)):
            wrong.append(f"{name}: client was granted write access")
        status = put_status(ioc.pv(name), value, ftype)
        if status != ECA_NOWTACCESS:
            wrong.append(f"{name} <- {value!r}: {ca.message(status)}")
    assert not wrong
    assert snapshot(ioc, "BGRSCRPT_01") == before
    for name in ("START.DESC", "AUTORESTART.ONST", "WATCHDOG.DRVH", "WATCHDOG.DRVL"):
        name = f"BGRSCRPT_01:{name}"
        assert ioc.get(name, as_string=True, use_monitor=False) == fields[name]
    assert ioc.get("BGRSCRPT:VERSION", use_monitor=False) == fields["BGRSCRPT:VERSION"]
    assert ioc.get("BGRSCRPT_01:PID", use_monitor=False) == pid
    # The writable records are writable (so the check above can fail).
    for name in ("START", "STOP", "RESTART", "AUTORESTART", "WATCHDOG"):
        assert may_write(ioc.pv(f"BGRSCRPT_01:{name}")), name
    assert_no_traceback(ioc)


# ---- commands that do not apply -------------------------------------------------


def test_start_while_running_and_stop_while_stopped_are_no_ops(make_ioc, config_dir, tmp_path):
    ioc, pid = running_ioc(make_ioc, config_dir)  # slot 02 has no script: STOPPED
    count = ioc.get("BGRSCRPT_01:START_CNT", use_monitor=False)
    assert count == 1
    runs_before = runs(tmp_path / "var", "BGRSCRPT_01")

    assert put_status(ioc.pv("BGRSCRPT_01:START"), 1, dbr.LONG) == ECA_NORMAL
    msg = wait_for(lambda: fresh_msg_with(ioc, "BGRSCRPT_01", "already running"), 5, "MSG")
    assert str(pid) in msg, msg
    assert ioc.get("BGRSCRPT_01:PID", use_monitor=False) == pid
    assert ioc.get("BGRSCRPT_01:START_CNT", use_monitor=False) == count
    assert ioc.status() == "RUNNING"
    assert ioc.get("BGRSCRPT_01:START", as_string=True, use_monitor=False) == "Off"
    assert runs(tmp_path / "var", "BGRSCRPT_01") == runs_before
    assert not process_gone(pid)

    assert ioc.status("BGRSCRPT_02") == "STOPPED"
    assert put_status(ioc.pv("BGRSCRPT_02:STOP"), "On", dbr.STRING) == ECA_NORMAL
    msg = wait_for(lambda: fresh_msg_with(ioc, "BGRSCRPT_02", "STOP ignored"), 5, "MSG")
    assert "not running" in msg, msg
    assert ioc.status("BGRSCRPT_02") == "STOPPED"
    assert ioc.get("BGRSCRPT_02:PID", use_monitor=False) == 0
    assert ioc.get("BGRSCRPT_02:START_CNT", use_monitor=False) == 0
    assert ioc.get("BGRSCRPT_02:STOP", as_string=True, use_monitor=False) == "Off"
    # Slot 01 still runs the same process.
    assert ioc.get("BGRSCRPT_01:PID", use_monitor=False) == pid
    assert_no_traceback(ioc)


# ---- scripts that cannot run ----------------------------------------------------


def assert_not_started(ioc: Ioc, var_dir: Path, slot: str) -> None:
    assert ioc.status(slot) == "STOPPED"
    assert ioc.get(f"{slot}:PID", use_monitor=False) == 0
    assert ioc.get(f"{slot}:START_CNT", use_monitor=False) == 0
    assert ioc.get(f"{slot}:EXIT_CODE", use_monitor=False) == 0
    assert ioc.get(f"{slot}:START", as_string=True, use_monitor=False) == "Off"
    assert runs(var_dir, slot) == []
    log = var_dir / "logs" / f"{slot}.log"
    assert not log.exists() or "started" not in log.read_text(), log.read_text()


def start_refused(ioc: Ioc, slot: str, expected: str) -> str:
    """STOP (a no-op that changes MSG), then START: return the MSG the START left."""
    ioc.put(f"{slot}:STOP", 1)
    wait_for(lambda: fresh_msg_with(ioc, slot, "STOP ignored"), 5, "STOP's MSG")
    assert put_status(ioc.pv(f"{slot}:START"), 1, dbr.LONG) == ECA_NORMAL
    return wait_for(lambda: fresh_msg_with(ioc, slot, expected), 5, f"MSG with {expected!r}")


def fresh_msg_with(ioc: Ioc, slot: str, text: str) -> str | None:
    """MSG when it contains ``text`` (MSG is published shortly after a put completes)."""
    msg = ioc.get(f"{slot}:MSG", as_string=True, use_monitor=False) or ""
    return msg if text in msg else None


def test_missing_script_is_stopped_and_start_says_where_it_looked(make_ioc, config_dir, tmp_path):
    ioc = make_ioc().start()
    script = config_dir / "background_script.py"
    ioc.wait_status("STOPPED")
    assert ioc.get("BGRSCRPT_01:MSG", as_string=True) == f"no script at {script}"
    assert ioc.get("BGRSCRPT_01:SCRIPT", as_string=True) == str(script)
    start_refused(ioc, "BGRSCRPT_01", f"no script at {script}")
    assert_not_started(ioc, tmp_path / "var", "BGRSCRPT_01")
    # Once the file is there, START runs it: nothing was remembered from before.
    write_script(config_dir, "background_script.py", QUIET_SCRIPT)
    ioc.put("BGRSCRPT_01:START", 1)
    ioc.wait_status("RUNNING")
    assert ioc.get("BGRSCRPT_01:START_CNT") == 1
    assert_no_traceback(ioc)


def test_a_directory_where_the_script_should_be(make_ioc, config_dir, tmp_path):
    script = config_dir / "background_script.py"
    script.mkdir()
    ioc = make_ioc().start()
    wait_for(lambda: str(script) in (ioc.get("BGRSCRPT_01:MSG", as_string=True) or ""), 5, "MSG")
    msg = ioc.get("BGRSCRPT_01:MSG", as_string=True)
    assert msg == f"not a file: {script}"
    assert_not_started(ioc, tmp_path / "var", "BGRSCRPT_01")
    assert start_refused(ioc, "BGRSCRPT_01", "not a file") == msg
    assert_not_started(ioc, tmp_path / "var", "BGRSCRPT_01")
    assert_no_traceback(ioc)


BROKEN_SCRIPT = """\
import time
print("must never run", flush=True)
def broken(:
    pass
"""


def test_a_script_with_a_syntax_error_is_never_started(make_ioc, config_dir, tmp_path):
    script = write_script(config_dir, "background_script.py", BROKEN_SCRIPT)
    ioc = make_ioc().start()
    wait_for(lambda: "syntax error" in (ioc.get("BGRSCRPT_01:MSG", as_string=True) or ""), 5, "MSG")
    msg = ioc.get("BGRSCRPT_01:MSG", as_string=True)
    assert msg.startswith(f"syntax error in {script} line 3"), msg
    assert_not_started(ioc, tmp_path / "var", "BGRSCRPT_01")
    assert start_refused(ioc, "BGRSCRPT_01", "syntax error") == msg
    ioc.put("BGRSCRPT_01:STOP", 1)
    wait_for(lambda: fresh_msg_with(ioc, "BGRSCRPT_01", "STOP ignored"), 5, "STOP's MSG")
    assert put_status(ioc.pv("BGRSCRPT_01:RESTART"), 1, dbr.LONG) == ECA_NORMAL
    assert wait_for(lambda: fresh_msg_with(ioc, "BGRSCRPT_01", "syntax error"), 5, "MSG") == msg
    assert_not_started(ioc, tmp_path / "var", "BGRSCRPT_01")
    assert "must never run" not in (ioc.get("BGRSCRPT_01:LOG", as_string=True) or "")
    # Fixed, it starts.
    write_script(config_dir, "background_script.py", QUIET_SCRIPT)
    ioc.put("BGRSCRPT_01:START", 1)
    ioc.wait_status("RUNNING")
    assert_no_traceback(ioc)


def test_a_script_broken_while_it_runs_keeps_running(make_ioc, config_dir):
    ioc, pid = running_ioc(make_ioc, config_dir)
    write_script(config_dir, "background_script.py", BROKEN_SCRIPT)
    assert put_status(ioc.pv("BGRSCRPT_01:START"), 1, dbr.LONG) == ECA_NORMAL
    wait_for(lambda: fresh_msg_with(ioc, "BGRSCRPT_01", "already running"), 5, "MSG")
    assert ioc.get("BGRSCRPT_01:PID", use_monitor=False) == pid
    assert not process_gone(pid)
    assert ioc.status() == "RUNNING"


# ---- [access] ------------------------------------------------------------------

WRITABLE = ("START", "STOP", "RESTART", "AUTORESTART", "WATCHDOG")


def test_write_hosts_without_this_host_refuses_every_put(make_ioc, config_dir):
    settings = FAST_SETTINGS + '\n[access]\nwrite_hosts = ["some-other-host"]\n'
    ioc, pid = running_ioc(make_ioc, config_dir, settings)
    before = snapshot(ioc, "BGRSCRPT_01")
    puts = [("STOP", 1, dbr.LONG), ("RESTART", "On", dbr.STRING), ("START", 1, dbr.LONG),
            ("AUTORESTART", "Off", dbr.STRING), ("WATCHDOG", 5.0, dbr.DOUBLE)]  # fmt: skip
    wrong = []
    for name, value, ftype in puts:
        pvname = ioc.pv(f"BGRSCRPT_01:{name}")
        if may_write(pvname):
            wrong.append(f"{name}: client was granted write access")
        status = put_status(pvname, value, ftype)
        if status != ECA_NOWTACCESS:
            wrong.append(f"{name} <- {value!r}: {ca.message(status)}")
    assert not wrong
    # Reads are fine, and nothing changed.
    assert snapshot(ioc, "BGRSCRPT_01") == before
    assert ioc.get("BGRSCRPT_01:PID", use_monitor=False) == pid
    assert ioc.get("BGRSCRPT:VERSION") is not None
    assert not process_gone(pid)
    assert_no_traceback(ioc)


def test_write_hosts_with_localhost_allows_puts(make_ioc, config_dir):
    settings = FAST_SETTINGS + '\n[access]\nwrite_hosts = ["some-other-host", "localhost"]\n'
    ioc, pid = running_ioc(make_ioc, config_dir, settings)
    for name in WRITABLE:
        assert may_write(ioc.pv(f"BGRSCRPT_01:{name}")), name
    assert not may_write(ioc.pv("BGRSCRPT_01:PID"))  # read-only stays read-only
    assert put_status(ioc.pv("BGRSCRPT_01:WATCHDOG"), 30.0, dbr.DOUBLE) == ECA_NORMAL
    assert ioc.get("BGRSCRPT_01:WATCHDOG", use_monitor=False) == 30.0
    assert put_status(ioc.pv("BGRSCRPT_01:STOP"), 1, dbr.LONG) == ECA_NORMAL
    ioc.wait_status("STOPPED")
    assert process_gone(pid)
