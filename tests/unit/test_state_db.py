"""The state database against a real file and a real SQLite: the caller never waits on the
disk, and no change is lost while the file is locked, deleted, replaced or truncated."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from bgrscrpt_ioc import state_db as state_db_module
from bgrscrpt_ioc.state_db import StateDB
from bgrscrpt_ioc.state_disk import DiskStatus
from tests.integration.faults import write_lock_held
from tests.integration.harness import wait_for

FAST = 0.05  # a call that touches only memory takes microseconds; this is generous


def disk_rows(path: Path, sql: str, params: tuple = ()) -> list[tuple]:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        return db.execute(sql, params).fetchall()


def saved_settings(path: Path) -> dict[tuple[str, str], str]:
    rows = disk_rows(path, "SELECT slot, key, value FROM settings")
    return {(slot, key): value for slot, key, value in rows}


class Statuses:
    """Collects what the writer reports (from its thread)."""

    def __init__(self, db: StateDB):
        self.seen: list[DiskStatus] = []
        self._lock = threading.Lock()
        db._writer._on_status = self._add

    def _add(self, status: DiskStatus) -> None:
        with self._lock:
            self.seen.append(status)

    def any(self, test) -> bool:
        with self._lock:
            return any(test(s) for s in self.seen)


@pytest.fixture
def db(tmp_path, test_tag):  # test_tag: the lock-holding process must not outlive the test
    db = StateDB(tmp_path / "state.sqlite")
    yield db
    db.close(timeout=5)


def test_changes_reach_the_file_with_ids_allocated_here(tmp_path, db):
    path = tmp_path / "state.sqlite"
    first = db.run_started("BGRSCRPT_01", 101)
    second = db.run_started("BGRSCRPT_02", 102)
    assert second == first + 1
    db.set_setting("BGRSCRPT_01", "WATCHDOG", "2.0")
    db.run_ended(first, -15, "stop")
    assert db.setting("BGRSCRPT_01", "WATCHDOG") == "2.0"  # memory answers at once
    wait_for(lambda: not db.unsaved(), 5, "the writer to catch up")
    rows = disk_rows(path, "SELECT id, slot, pid, exit_code, cause FROM runs ORDER BY id")
    assert rows == [
        (first, "BGRSCRPT_01", 101, -15, "stop"),
        (second, "BGRSCRPT_02", 102, None, None),
    ]
    assert saved_settings(path) == {("BGRSCRPT_01", "WATCHDOG"): "2.0"}
    db.close()
    again = StateDB(path)
    try:
        assert [r.pid for r in again.open_runs()] == [102]
        assert again.run_started("BGRSCRPT_01", 103) == second + 1  # ids go on
    finally:
        again.close()


def test_a_locked_file_never_holds_the_caller_and_loses_nothing(tmp_path, db, caplog):
    path = tmp_path / "state.sqlite"
    statuses = Statuses(db)
    wait_for(lambda: path.exists() and not db.unsaved(), 5, "the file")
    with write_lock_held(path):
        began = time.monotonic()
        run = db.run_started("BGRSCRPT_01", 4242)
        for value in ("1.0", "2.0", "3.0"):
            db.set_setting("BGRSCRPT_01", "WATCHDOG", value)
        db.run_ended(run, 0, "exit-code")
        assert time.monotonic() - began < FAST
        wait_for(lambda: not db.status.saving, 5, "the writer to report the lock")
        assert db.status.problem == "the database is locked by another process"
        # The three puts of one setting are one change waiting: the last value.
        assert db.unsaved() == [
            "the start of BGRSCRPT_01's run, pid 4242",
            "BGRSCRPT_01 WATCHDOG = 3.0",
            "the end of run 1 (exit-code, exit code 0)",
        ]
        assert saved_settings(path) == {}
    wait_for(lambda: db.status.saving, 10, "the writer to save once the lock is gone")
    assert not db.unsaved()
    assert saved_settings(path) == {("BGRSCRPT_01", "WATCHDOG"): "3.0"}
    assert disk_rows(path, "SELECT pid, cause FROM runs") == [(4242, "exit-code")]
    assert "saved again" in db.status.note
    assert statuses.any(lambda s: not s.saving) and statuses.any(lambda s: "saved again" in s.note)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "locked by another process" in errors[0], errors


def test_deleted_while_open_is_written_afresh_with_what_memory_holds(tmp_path, db):
    path = tmp_path / "state.sqlite"
    db.set_setting("BGRSCRPT_01", "AUTORESTART", "2")
    db.set_setting("watch:ZF", "enable", "0")
    open_run = db.run_started("BGRSCRPT_02", 77)
    rid = db.watch_restart_began("ZF", ["ZFCNTRL_01"], manual=False)
    db.watch_event("ZF", "lockout", "LOCKOUT: 1 restarts in 60 s; last failure: refused")
    wait_for(lambda: path.exists() and not db.unsaved(), 5, "the file")
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    wait_for(lambda: path.exists(), 5, "the file to be written afresh")
    wait_for(lambda: "deleted" in db.status.note, 5, "the note")
    assert saved_settings(path) == {
        ("BGRSCRPT_01", "AUTORESTART"): "2",
        ("watch:ZF", "enable"): "0",
    }
    assert disk_rows(path, "SELECT id, pid FROM runs WHERE ended IS NULL") == [(open_run, 77)]
    db.run_ended(open_run, 0, "exit-code")  # and it goes on being written
    wait_for(lambda: not db.unsaved(), 5, "the next change")
    assert disk_rows(path, "SELECT cause FROM runs") == [("exit-code",)]
    db.close()
    again = StateDB(path)
    try:
        history = again.watch_history("ZF")
        assert history.locked_out and history.restart_count == 1 and rid
        assert history.lockout.endswith("last failure: refused")
    finally:
        again.close()


def test_replaced_while_open_keeps_the_stranger_aside(tmp_path, db):
    path = tmp_path / "state.sqlite"
    db.set_setting("BGRSCRPT_01", "WATCHDOG", "5.0")
    wait_for(lambda: path.exists() and not db.unsaved(), 5, "the file")
    stranger = tmp_path / "other.sqlite"
    with contextlib.closing(sqlite3.connect(stranger)) as other:
        other.execute("CREATE TABLE mine (x)")
        other.commit()
    stranger.replace(path)
    wait_for(lambda: "replaced" in db.status.note, 5, "the replacement to be noticed")
    assert saved_settings(path) == {("BGRSCRPT_01", "WATCHDOG"): "5.0"}
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("state.sqlite.replaced-")]
    # Alone: the writer's -wal is not the stranger's.
    assert len(kept) == 1, list(tmp_path.iterdir())
    assert disk_rows(kept[0], "SELECT name FROM sqlite_master") == [("mine",)]
    assert kept[0].name in db.status.note


def test_truncated_while_open_is_written_afresh(tmp_path, db):
    path = tmp_path / "state.sqlite"
    for n in range(50):
        db.set_setting("BGRSCRPT_01", f"K{n}", "x" * 200)
    wait_for(lambda: path.exists() and not db.unsaved(), 5, "the file")
    with contextlib.closing(sqlite3.connect(path)) as other:  # push the WAL into the file
        other.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert path.stat().st_size > 4096
    db.set_setting("BGRSCRPT_01", "WATCHDOG", "3.0")  # the writer notes the size it leaves
    wait_for(lambda: not db.unsaved(), 5, "the write")
    with open(path, "r+b") as f:
        f.truncate(0)
    wait_for(lambda: "truncated" in db.status.note, 5, "the truncation to be noticed")
    assert len(saved_settings(path)) == 51


def test_corrupt_at_start_is_moved_aside_and_the_ioc_starts_afresh(tmp_path, caplog):
    path = tmp_path / "state.sqlite"
    path.write_bytes(b"this is not a database\n" * 100)
    with caplog.at_level(logging.WARNING):
        db = StateDB(path)
    try:
        kept = [p for p in tmp_path.iterdir() if p.name.startswith("state.sqlite.corrupt-")]
        assert len(kept) == 1
        assert kept[0].read_bytes().startswith(b"this is not a database")
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and kept[0].name in warnings[0], warnings
        assert "corrupt" in db.start_warning
        db.set_setting("BGRSCRPT_01", "WATCHDOG", "2.0")
        wait_for(lambda: path.exists() and not db.unsaved(), 5, "a fresh file")
        assert saved_settings(path) == {("BGRSCRPT_01", "WATCHDOG"): "2.0"}
    finally:
        db.close()


def test_close_says_what_could_not_be_saved(tmp_path, caplog, test_tag):
    path = tmp_path / "state.sqlite"
    db = StateDB(path)
    wait_for(lambda: path.exists() and not db.unsaved(), 5, "the file")
    with write_lock_held(path):
        db.set_setting("BGRSCRPT_02", "AUTORESTART", "0")
        began = time.monotonic()
        lost = db.close(timeout=1.0)
        assert time.monotonic() - began < 3.0
    assert lost == ["BGRSCRPT_02 AUTORESTART = 0"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any("could not be saved before exit" in e and "AUTORESTART = 0" in e for e in errors)


def test_memory_stays_bounded_but_open_runs_and_counts_survive(tmp_path, monkeypatch):
    monkeypatch.setattr(state_db_module, "KEPT_IN_MEMORY", 5)
    monkeypatch.setattr(state_db_module, "_PRUNE_EVERY", 4)
    path = tmp_path / "state.sqlite"
    db = StateDB(path)
    try:
        still_open = db.run_started("BGRSCRPT_01", 1)
        for n in range(20):
            db.run_ended(db.run_started("BGRSCRPT_01", 100 + n), 0, "exit-code")
            db.watch_restart_began("ZF", ["A"], manual=False)
        assert len(db.runs("BGRSCRPT_01", limit=100)) <= 5 + 4 + 1
        assert [r.id for r in db.open_runs()] == [still_open]
        assert db.watch_history("ZF").restart_count == 20
        wait_for(lambda: not db.unsaved(), 5, "the file")
        assert disk_rows(path, "SELECT COUNT(*) FROM runs") == [(21,)]  # the file keeps all
    finally:
        db.close()


def test_changes_in_quick_succession_are_written_together(tmp_path, db):
    """Puts back to back wake the writer once and share its transaction: the writer's
    thread must not take a turn (and the GIL, and the file's locks) for each of them."""
    path = tmp_path / "state.sqlite"

    def saved(slot: str, key: str) -> str | None:
        try:
            return saved_settings(path).get((slot, key))
        except sqlite3.Error:  # not created yet
            return None

    db.set_setting("BGRSCRPT_01", "watchdog", "0")
    wait_for(lambda: saved("BGRSCRPT_01", "watchdog") == "0")
    writes: list[int] = []
    real_write = db._writer._write

    def counting_write(batch):
        writes.append(len(batch))
        real_write(batch)

    db._writer._write = counting_write
    for n in range(200):  # a client putting back to back: a put every millisecond
        db.set_setting("BGRSCRPT_01", "watchdog", str(n % 7))
        db.set_setting("BGRSCRPT_02", f"key{n}", str(n))
        time.sleep(0.001)  # the spacing of the puts, not a wait for a condition
    wait_for(lambda: saved("BGRSCRPT_02", "key199") == "199")
    assert saved("BGRSCRPT_01", "watchdog") == str(199 % 7)
    assert len(writes) < 40, writes  # about 0.2 s of puts: one write per GATHER or so
