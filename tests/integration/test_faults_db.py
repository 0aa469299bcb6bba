"""The real IOC while its state database is locked, full, deleted, replaced or truncated.

Each time: the heartbeat keeps its beat (a libca monitor), runs start and end,
settings put over CA are kept and reach the file once it can be written,
``BGRSCRPT:MSG`` says what is wrong (MAJOR) and clears when it is over, and
nothing is left running (the ``test_tag`` fixture).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from pathlib import Path

from tests.integration.beat import Heartbeat
from tests.integration.conftest import FAST_SETTINGS, write_script
from tests.integration.faults import (
    fill_disk,
    ioc_msg,
    saved_runs,
    saved_settings,
    small_tmpfs,
    write_lock_held,
)
from tests.integration.harness import wait_for

S01 = "BGRSCRPT_01"
QUIET = """
import time
print("up", flush=True)
while True:
    time.sleep(0.2)
"""


def timed_put(ioc, suffix: str, value) -> float:
    began = time.monotonic()
    assert ioc.put(suffix, value) == 1, f"put {suffix} {value!r} refused"
    return time.monotonic() - began


def start_running(make_ioc, config_dir: Path, **kw):
    write_script(config_dir, "background_script.py", QUIET)
    ioc = make_ioc(FAST_SETTINGS, slots=1, **kw).start()
    ioc.wait_status("RUNNING")
    return ioc


def test_a_locked_database_holds_nothing_and_loses_nothing(make_ioc, config_dir, prefix):
    ioc = start_running(make_ioc, config_dir)
    state = ioc.var_dir / "state.sqlite"
    with Heartbeat(prefix) as beat, write_lock_held(state):
        # Every put answers at once (it once took SQLite's 5 s busy timeout, on the loop).
        assert timed_put(ioc, f"{S01}:WATCHDOG", 30.0) < 1.0
        assert timed_put(ioc, f"{S01}:AUTORESTART", "Always") < 1.0
        assert timed_put(ioc, "BGRSCRPT:WATCH:DRYRUN", 1) < 1.0
        # A run ends and another starts (its records wait in memory).
        ioc.put(f"{S01}:RESTART", 1)
        wait_for(lambda: ioc.get(f"{S01}:START_CNT") == 2, 10, "the second run")
        ioc.wait_status("RUNNING")
        wait_for(lambda: ioc_msg(ioc)[1] == "MAJOR", 10, "BGRSCRPT:MSG to go MAJOR")
        text, _ = ioc_msg(ioc)
        assert "state database: cannot save since" in text, text
        assert "locked by another process" in text and "retrying" in text, text
        assert saved_settings(ioc.var_dir) == {}
        beat.check()
    with Heartbeat(prefix) as beat:
        wait_for(lambda: ioc_msg(ioc)[1] == "NO_ALARM", 10, "BGRSCRPT:MSG to clear")
        assert "saved again" in ioc_msg(ioc)[0]
        assert saved_settings(ioc.var_dir) == {
            (S01, "WATCHDOG"): "30.0",
            (S01, "AUTORESTART"): "2",
            ("watch", "dryrun"): "1",
        }
        runs = saved_runs(ioc.var_dir)
        assert [(ended, cause) for _, ended, _, cause in runs] == [(1, "stop"), (0, None)]
        beat.check()
    assert ioc.stop() == 0


def test_sigterm_while_locked_stops_and_names_what_was_not_saved(make_ioc, config_dir):
    ioc = start_running(make_ioc, config_dir)
    with write_lock_held(ioc.var_dir / "state.sqlite"):
        ioc.put(f"{S01}:WATCHDOG", 12.0)
        began = time.monotonic()
        assert ioc.stop(timeout=20.0) == 0  # the scripts stopped; it did not hang
        assert time.monotonic() - began < 15.0
    out = ioc.output()
    assert "could not be saved before exit" in out, out
    assert f"{S01} WATCHDOG = 12.0" in out, out
    assert "Traceback" not in out, out


def test_a_full_disk_is_said_and_outlived(make_ioc, config_dir, tmp_path, prefix):
    with small_tmpfs(tmp_path / "small") as small:
        var_dir = small / "var"
        ioc = start_running(make_ioc, config_dir, var_dir=var_dir)
        filler = fill_disk(small)
        try:
            with Heartbeat(prefix) as beat:
                assert timed_put(ioc, f"{S01}:WATCHDOG", 7.0) < 1.0
                ioc.put(f"{S01}:RESTART", 1)
                wait_for(lambda: ioc.get(f"{S01}:START_CNT") == 2, 10, "the second run")
                wait_for(lambda: ioc_msg(ioc)[1] == "MAJOR", 10, "BGRSCRPT:MSG to go MAJOR")
                assert "the disk is full" in ioc_msg(ioc)[0], ioc_msg(ioc)
                ioc.wait_status("RUNNING")
                beat.check()
                filler.unlink()
                wait_for(lambda: ioc_msg(ioc)[1] == "NO_ALARM", 10, "BGRSCRPT:MSG to clear")
                assert saved_settings(var_dir)[(S01, "WATCHDOG")] == "7.0"
                beat.check()
        finally:
            if filler.exists():
                filler.unlink()
            assert ioc.stop() == 0


def test_deleted_replaced_or_truncated_while_running_is_written_afresh(
    make_ioc, config_dir, prefix, port_pool
):
    ioc = start_running(make_ioc, config_dir)
    state = ioc.var_dir / "state.sqlite"
    ioc.put(f"{S01}:AUTORESTART", "Always")
    ioc.put(f"{S01}:WATCHDOG", 9.0)
    want = {(S01, "AUTORESTART"): "2", (S01, "WATCHDOG"): "9.0"}
    wait_for(lambda: saved_settings(ioc.var_dir) == want, 5, "the settings saved")
    with Heartbeat(prefix) as beat:
        # deleted (as `rm state.sqlite*` would)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{state}{suffix}").unlink(missing_ok=True)
        wait_for(lambda: "deleted while the IOC was running" in ioc_msg(ioc)[0], 10, "deleted")
        assert saved_settings(ioc.var_dir) == want
        # replaced by another database
        stranger = ioc.var_dir / "stranger.sqlite"
        with sqlite3.connect(stranger) as other:
            other.execute("CREATE TABLE settings (slot, key, value)")
        stranger.replace(state)
        wait_for(lambda: "replaced while the IOC was running" in ioc_msg(ioc)[0], 10, "replaced")
        assert saved_settings(ioc.var_dir) == want
        assert any(p.name.startswith("state.sqlite.replaced-") for p in ioc.var_dir.iterdir())
        # truncated to nothing
        os.truncate(state, 0)
        wait_for(lambda: "truncated while the IOC was running" in ioc_msg(ioc)[0], 10, "truncated")
        assert saved_settings(ioc.var_dir) == want
        assert ioc_msg(ioc)[1] == "NO_ALARM"
        beat.check()
    # What was written afresh is what the next IOC starts from, even after a SIGKILL.
    pid = ioc.get(f"{S01}:PID")
    ioc.kill()
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 5, "the script to die")
    second = make_ioc(None, slots=1, port=port_pool.take()).start()
    wait_for(lambda: second.get(f"{S01}:WATCHDOG") == 9.0, 10, "WATCHDOG from the file")
    assert second.get(f"{S01}:AUTORESTART", as_string=True) == "Always"
    assert second.stop() == 0


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_sigkill_during_a_run_records_it_as_killed_at_the_next_start(
    make_ioc, config_dir, port_pool
):
    ioc = start_running(make_ioc, config_dir)
    pid = ioc.get(f"{S01}:PID")
    wait_for(lambda: saved_runs(ioc.var_dir) == [(pid, 0, None, None)], 5, "the run saved")
    ioc.signal(signal.SIGKILL)
    ioc.kill()
    second = make_ioc(None, slots=1, port=port_pool.take()).start()
    wait_for(lambda: saved_runs(second.var_dir)[0][1] == 1, 10, "the old run closed")
    assert saved_runs(second.var_dir)[0] == (pid, 1, -9, "ioc-exit")
    assert "ended when the previous IOC died (killed by SIGKILL)" in second.output()
    assert second.stop() == 0


def test_values_edited_into_the_database_by_hand_are_ignored_with_a_warning(make_ioc, config_dir):
    ioc = start_running(make_ioc, config_dir)
    assert ioc.stop() == 0
    db = sqlite3.connect(ioc.var_dir / "state.sqlite")
    with db:
        db.execute("INSERT OR REPLACE INTO settings VALUES (?, 'AUTORESTART', '7')", (S01,))
        db.execute("INSERT OR REPLACE INTO settings VALUES (?, 'WATCHDOG', 'soon')", (S01,))
        db.execute("INSERT INTO runs (slot, pid, started) VALUES (?, 'abc', 'then')", (S01,))
    db.close()
    again = make_ioc(None, slots=1, var_dir=ioc.var_dir).start()
    again.wait_status("RUNNING")
    assert again.get(f"{S01}:AUTORESTART", as_string=True) == "On failure"
    assert again.get(f"{S01}:WATCHDOG") == 0
    again.stop()
    out = again.output()
    assert "ignoring the saved AUTORESTART '7'" in out, out
    assert "ignoring the saved WATCHDOG 'soon'" in out, out
    assert "the run of pid 'abc' ended when the previous IOC died" in out, out
    assert "Traceback" not in out and "Logging error" not in out, out
