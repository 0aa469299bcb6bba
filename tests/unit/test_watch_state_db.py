"""What the state database keeps of the watches, so a restarted IOC cannot storm."""

from __future__ import annotations

import time

from bgrscrpt_ioc.state_db import NOT_SENT, StateDB


def test_history_counts_restarts_failures_and_lockout_across_reopen(tmp_path):
    path = tmp_path / "state.sqlite"
    db = StateDB(path)
    first = db.watch_restart_began("ZF", ["ZFCNTRL_01"], manual=False)
    db.watch_restart_outcome(first, "failed", "not recovered within 60 s")
    second = db.watch_restart_began("ZF", ["ZFCNTRL_01"], manual=True)
    db.watch_event("ZF", "lockout", "LOCKOUT: 2 restarts in 3600 s")
    # The IOC dies here, with the second restart under way.
    db.close()

    db = StateDB(path)
    assert db.close_open_watch_restarts() == 1
    history = db.watch_history("ZF")
    assert history.restart_count == 2
    assert history.failures == 2  # failed, then interrupted
    assert history.locked_out
    assert len(history.recent) == 2
    assert all(time.time() - t < 60 for t in history.recent)
    assert history.last_restart
    rows = db.watch_restarts("ZF")
    assert [r["outcome"] for r in rows] == ["interrupted", "failed"]
    assert rows[0]["id"] == second and rows[0]["manual"] == 1
    assert db.watch_history("OTHER").restart_count == 0
    db.close()


def test_cleared_lockout_resets_the_window_and_failures(tmp_path):
    db = StateDB(tmp_path / "state.sqlite")
    for _ in range(3):
        rid = db.watch_restart_began("ZF", ["A", "B"], manual=False)
        db.watch_restart_outcome(rid, "failed", "x")
    db.watch_event("ZF", "lockout", "LOCKOUT")
    db.watch_event("ZF", "cleared", "LOCKOUT cleared by ENABLE")
    history = db.watch_history("ZF")
    assert not history.locked_out
    assert history.recent == []
    assert history.failures == 0
    assert history.restart_count == 3  # RESTART_CNT keeps counting
    rid = db.watch_restart_began("ZF", ["A", "B"], manual=False)
    db.watch_restart_outcome(rid, "recovered", "recovered in 1.0 s")
    history = db.watch_history("ZF")
    assert history.failures == 0 and len(history.recent) == 1
    db.close()


def test_a_restart_that_reached_nothing_counts_towards_neither_lockout_nor_back_off(tmp_path):
    db = StateDB(tmp_path / "state.sqlite")
    for _ in range(5):
        rid = db.watch_restart_began("ZF", ["A"], manual=False)
        db.watch_restart_outcome(rid, NOT_SENT, "peer P: does not connect")
    rid = db.watch_restart_began("ZF", ["A"], manual=False)
    db.watch_restart_outcome(rid, "failed", "not recovered within 60 s")
    history = db.watch_history("ZF")
    assert len(history.recent) == 1 and history.failures == 1
    assert history.restart_count == 6
    db.close()
