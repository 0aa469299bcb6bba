"""Alarm recovery against real components: Debian's procServ running an EPICS
base IOC (db_templates/sim_device.db), watched by the real IOC over CA."""

from __future__ import annotations

import contextlib
import sqlite3
import textwrap

import pytest

from devsupport.epics_base import SimDevice
from tests.integration.harness import wait_for

T = 60.0  # generous: two cores shared with other test runs


def watch_settings(sim: SimDevice, **overrides: object) -> str:
    values = {
        "name": "SIM",
        "pvs": [sim.pv()],
        "severity": "INVALID",
        "delay": 0.2,
        "restart": [sim.name],
        "procserv": f"{{ {sim.name} = {sim.control!r} }}".replace("'", '"'),
        "verify_timeout": 30.0,
        "max_restarts": 3,
        "window": 3600.0,
        "backoff": 0.5,
        "backoff_max": 2.0,
        **overrides,
    }
    lines = ["[[watch]]"]
    for key, value in values.items():
        if key == "procserv":
            lines.append(f"procserv = {value}")
        elif isinstance(value, str):
            lines.append(f'{key} = "{value}"')
        elif isinstance(value, list):
            lines.append(f"{key} = [{', '.join(repr(v).replace(chr(39), chr(34)) for v in value)}]")
        elif isinstance(value, bool):
            lines.append(f"{key} = {'true' if value else 'false'}")
        else:
            lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


@pytest.fixture
def sims(tmp_path, port_pool, prefix, test_tag):
    made: list[SimDevice] = []

    def make(**kw) -> SimDevice:
        kw.setdefault("prefix", f"{prefix}D:")
        kw.setdefault("port", port_pool.take())
        sim = SimDevice(tmp_path, **kw)
        made.append(sim)
        return sim.start()

    yield make
    for sim in made:
        sim.stop()


def state(ioc, name="SIM"):
    return ioc.get(f"BGRSCRPT:WATCH:{name}:STATE", as_string=True)


def msg(ioc, name="SIM"):
    # count: pyepics otherwise keeps the length of an earlier, shorter text.
    return ioc.get(f"BGRSCRPT:WATCH:{name}:MSG", as_string=True, count=1024)


def wait_state(ioc, wanted, name="SIM", timeout=T):
    wait_for(
        lambda: state(ioc, name) == wanted,
        timeout,
        f"watch {name} STATE {wanted} (MSG {msg(ioc, name)!r})",
    )


def wait_alarm(ioc, wanted, name="SIM", timeout=T):
    wait_for(
        lambda: ioc.get(f"BGRSCRPT:WATCH:{name}:ALARM", as_string=True) == wanted,
        timeout,
        f"watch {name} ALARM {wanted}",
    )


@pytest.mark.parametrize("autorestart", [True, False], ids=["autorestart-ON", "autorestart-OFF"])
def test_fault_restart_recovery(make_ioc, sims, autorestart):
    sim = sims(autorestart=autorestart)
    mode = sim.autorestart_mode()
    assert mode == ("ON" if autorestart else "OFF")
    old_pid = sim.child_pid()
    ioc = make_ioc(watch_settings(sim)).start()
    wait_state(ioc, "OK")
    wait_alarm(ioc, "NO_ALARM")
    assert ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 0

    sim.fault()
    assert sim.severity() == 3  # INVALID
    wait_for(lambda: ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 1, T, "a restart")
    wait_state(ioc, "OK")
    text = msg(ioc)
    assert f"restarted {sim.name}, recovered in" in text, text
    wait_for(lambda: sim.severity() == 0, T, "the new IOC's VALUE NO_ALARM to a CA client")
    assert sim.child_pid() != old_pid
    assert sim.autorestart_mode() == mode  # left as found
    with contextlib.closing(sqlite3.connect(ioc.var_dir / "state.sqlite")) as db:
        # nothing left to put back, and the restart and its outcome recorded
        assert db.execute("SELECT * FROM settings WHERE slot = 'procserv-mode'").fetchall() == []
        rows = db.execute("SELECT watch, iocs, outcome FROM watch_restarts").fetchall()
    assert rows == [("SIM", sim.name, "recovered")]
    assert ioc.get("BGRSCRPT:WATCH:SIM:LAST_RESTART", as_string=True)
    wait_alarm(ioc, "NO_ALARM")


def test_restart_over_a_unix_socket_and_by_hand(make_ioc, sims):
    sim = sims(unix_socket=True)
    old_pid = sim.child_pid()
    ioc = make_ioc(watch_settings(sim)).start()
    wait_state(ioc, "OK")
    ioc.put("BGRSCRPT:WATCH:SIM:RESTART", 1)
    wait_for(lambda: ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 1, T, "a restart by hand")
    wait_state(ioc, "OK")
    assert sim.child_pid() != old_pid
    assert ioc.get("BGRSCRPT:WATCH:SIM:RESTART", as_string=True) == "Off"


def test_incurable_fault_locks_out_survives_an_ioc_restart_and_enable_clears(
    make_ioc, sims, tmp_path
):
    # FAULTED=1: the device is broken from the start; no restart can cure it.
    sim = sims(FAULTED="1")
    settings = watch_settings(sim, max_restarts=2, verify_timeout=4.0)
    ioc = make_ioc(settings).start()
    wait_state(ioc, "LOCKOUT", timeout=120)
    assert ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 2
    assert "LOCKOUT: 2 restarts in 3600 s" in msg(ioc)
    pid = sim.child_pid()

    # The IOC restarted (even killed) keeps its counts and does not restart again.
    ioc.kill()
    ioc2 = make_ioc(None).start()
    wait_state(ioc2, "LOCKOUT")
    assert ioc2.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 2
    assert sim.child_pid() == pid

    ioc2.put("BGRSCRPT:WATCH:SIM:ENABLE", 1)
    wait_for(lambda: ioc2.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 3, T, "a restart after ENABLE")
    assert sim.child_pid() != pid


def test_unreachable_procserv_is_failed_with_a_clear_msg_and_retried(make_ioc, sims, test_tag):
    from devsupport.ports import free_loopback_port

    sim = sims(procserv=False, FAULTED="1")
    sim.control = f"127.0.0.1:{free_loopback_port()}"  # nobody listens there
    ioc = make_ioc(watch_settings(sim, backoff=0.5, max_restarts=10)).start()
    wait_state(ioc, "FAILED")
    assert f"procServ at {sim.control} refused the connection" in msg(ioc)
    # Retried with back-off, and the IOC is alive and well.
    wait_for(lambda: ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") >= 2, T, "a retry")
    assert ioc.get("BGRSCRPT:VERSION") is not None


def test_dryrun_sends_nothing(make_ioc, sims):
    sim = sims()
    pid = sim.child_pid()
    ioc = make_ioc(watch_settings(sim)).start()
    wait_state(ioc, "OK")
    ioc.put("BGRSCRPT:WATCH:DRYRUN", 1)
    sim.fault()
    wait_for(lambda: "DRYRUN: would restart" in (msg(ioc) or ""), T, "the DRYRUN decision")
    assert ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 0
    assert sim.child_pid() == pid
    assert sim.severity() == 3
    # DRYRUN is kept across an IOC restart.
    ioc.stop()
    ioc2 = make_ioc(None).start()
    assert ioc2.get("BGRSCRPT:WATCH:DRYRUN", as_string=True) == "On"


def test_watched_pv_that_never_existed(make_ioc, sims, prefix):
    sim = sims(procserv=True)
    pid = sim.child_pid()
    settings = watch_settings(sim, pvs=[f"{prefix}NO:SUCH:PV"], disconnected=True, delay=0.5)
    settings = settings.replace("verify_timeout = 30.0", "verify_timeout = 3.0")
    ioc = make_ioc(settings).start()
    # Disconnected past the connect grace: restarted, then FAILED (still not there).
    wait_state(ioc, "FAILED", timeout=T)
    text = msg(ioc)
    assert "NO:SUCH:PV" in text, text
    assert sim.child_pid() != pid
    assert ioc.get("BGRSCRPT:WATCH:SIM:ALARM", as_string=True) == "DISCONNECTED"


def test_enable_off_disables(make_ioc, sims):
    sim = sims()
    pid = sim.child_pid()
    ioc = make_ioc(textwrap.dedent(watch_settings(sim))).start()
    wait_state(ioc, "OK")
    ioc.put("BGRSCRPT:WATCH:SIM:ENABLE", 0)
    wait_state(ioc, "DISABLED")
    sim.fault()
    wait_alarm(ioc, "INVALID")
    assert state(ioc) == "DISABLED"
    assert sim.child_pid() == pid
    ioc.put("BGRSCRPT:WATCH:SIM:ENABLE", 1)
    wait_for(lambda: ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 1, T, "a restart once enabled")


def test_trigger_on_values(make_ioc, sims):
    # FAULT itself carries no alarm: only its value ("Fault") can trigger this watch.
    sim = sims()
    pid = sim.child_pid()
    settings = watch_settings(sim, pvs=[sim.pv(field="FAULT")]).replace(
        'severity = "INVALID"', 'severity = "INVALID"\nvalues = ["Fault"]'
    )
    ioc = make_ioc(settings).start()
    wait_state(ioc, "OK")
    wait_alarm(ioc, "NO_ALARM")
    sim.fault()
    wait_for(lambda: ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 1, T, "a restart")
    wait_state(ioc, "OK")
    assert "recovered" in msg(ioc)
    assert sim.child_pid() != pid


def test_auto_restart_left_off_by_a_restart_cut_short_is_put_back(make_ioc, sims, tmp_path):
    # As if an IOC had been killed between the toggles: procServ left OFF, and the
    # state database noting that it was ON.
    from bgrscrpt_ioc.state_db import StateDB

    sim = sims(autorestart=False)
    assert sim.autorestart_mode() == "OFF"
    (tmp_path / "var").mkdir()
    db = StateDB(tmp_path / "var" / "state.sqlite")
    db.set_setting("procserv-mode", sim.control, "ON")
    db.close()
    pid = sim.child_pid()
    ioc = make_ioc(watch_settings(sim)).start()
    wait_for(lambda: sim.autorestart_mode() == "ON", T, "procServ's auto restart back ON")
    wait_for(lambda: "auto restart put back to ON" in ioc.output(), T, "the IOC to log it")
    assert sim.child_pid() == pid  # nothing restarted
    # and a restart now leaves it ON, as it found it
    ioc.put("BGRSCRPT:WATCH:SIM:RESTART", 1)
    wait_for(lambda: ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 1, T, "a restart")
    wait_state(ioc, "OK")
    assert sim.autorestart_mode() == "ON"
    assert sim.child_pid() != pid
