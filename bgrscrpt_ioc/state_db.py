"""The state database: every run of every slot, and the settings operators wrote.

SQLite in WAL mode in the var dir. Writes are a few small rows per run, so they
are done synchronously on the event loop. A lock file keeps a second IOC off the
same var dir: two writers would not corrupt SQLite, but they would kill each
other's "leftover" scripts at start-up.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY,
    slot TEXT NOT NULL,
    pid INTEGER NOT NULL,
    started TEXT NOT NULL,
    ended TEXT,
    exit_code INTEGER,
    cause TEXT
);
CREATE INDEX IF NOT EXISTS runs_slot ON runs (slot, id);
CREATE TABLE IF NOT EXISTS settings (
    slot TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (slot, key)
);
CREATE TABLE IF NOT EXISTS watch_restarts (
    id INTEGER PRIMARY KEY,
    watch TEXT NOT NULL,
    started TEXT NOT NULL,
    epoch REAL NOT NULL,
    manual INTEGER NOT NULL,
    iocs TEXT NOT NULL,
    outcome TEXT,
    detail TEXT
);
CREATE INDEX IF NOT EXISTS watch_restarts_watch ON watch_restarts (watch, id);
CREATE TABLE IF NOT EXISTS watch_events (
    id INTEGER PRIMARY KEY,
    watch TEXT NOT NULL,
    at TEXT NOT NULL,
    epoch REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS watch_events_watch ON watch_events (watch, id);
"""


class VarDirInUse(Exception):
    """Another IOC holds this var dir."""


def wall_now() -> str:
    """Wall-clock time for people to read, with the local offset."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


class VarDirLock:
    """An exclusive ``flock`` on VAR/bgrscrpt.lock, held for the life of the IOC."""

    def __init__(self, var_dir: Path):
        self.path = var_dir / "bgrscrpt.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise VarDirInUse(
                f"var dir {self.path.parent} is in use by another bgrscrpt_ioc (pid {holder}); "
                "give each IOC its own --var-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class OpenRun:
    """A run the database saw start but never end: its IOC went away under it."""

    id: int
    slot: str
    pid: int


@dataclass(frozen=True)
class WatchHistory:
    """What the database knows of one watch, for its start-up.

    ``recent``: wall times (epoch seconds) of the restarts since the last LOCKOUT
    was cleared; ``failures``: failed recoveries in a row since the last success.
    """

    restart_count: int
    recent: list[float]
    locked_out: bool
    failures: int
    last_restart: str


class StateDB:
    """Runs and persisted settings. One instance per IOC, used from the loop thread."""

    def __init__(self, path: Path):
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def run_started(self, slot: str, pid: int) -> int:
        cur = self._db.execute(
            "INSERT INTO runs (slot, pid, started) VALUES (?, ?, ?)", (slot, pid, wall_now())
        )
        return int(cur.lastrowid or 0)

    def run_ended(self, run_id: int, exit_code: int, cause: str) -> None:
        self._db.execute(
            "UPDATE runs SET ended = ?, exit_code = ?, cause = ? WHERE id = ?",
            (wall_now(), exit_code, cause, run_id),
        )

    def open_runs(self) -> list[OpenRun]:
        rows = self._db.execute("SELECT id, slot, pid FROM runs WHERE ended IS NULL ORDER BY id")
        return [OpenRun(*row) for row in rows]

    def runs(self, slot: str, limit: int = 20) -> list[dict[str, object]]:
        """The most recent runs of a slot, newest first."""
        cur = self._db.execute(
            "SELECT id, slot, pid, started, ended, exit_code, cause FROM runs "
            "WHERE slot = ? ORDER BY id DESC LIMIT ?",
            (slot, limit),
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]

    def setting(self, slot: str, key: str) -> str | None:
        row = self._db.execute(
            "SELECT value FROM settings WHERE slot = ? AND key = ?", (slot, key)
        ).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, slot: str, key: str, value: str) -> None:
        self._db.execute(
            "INSERT INTO settings (slot, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (slot, key) DO UPDATE SET value = excluded.value",
            (slot, key, value),
        )

    def clear_setting(self, slot: str, key: str) -> None:
        self._db.execute("DELETE FROM settings WHERE slot = ? AND key = ?", (slot, key))

    def settings_of(self, slot: str) -> dict[str, str]:
        rows = self._db.execute("SELECT key, value FROM settings WHERE slot = ?", (slot,))
        return {str(key): str(value) for key, value in rows}

    # ---- alarm recovery ----------------------------------------------------------

    def watch_restart_began(self, watch: str, iocs: list[str], *, manual: bool) -> int:
        """Recorded before anything is sent, so a restart cut short still counts."""
        cur = self._db.execute(
            "INSERT INTO watch_restarts (watch, started, epoch, manual, iocs) "
            "VALUES (?, ?, ?, ?, ?)",
            (watch, wall_now(), time.time(), int(manual), " ".join(iocs)),
        )
        return int(cur.lastrowid or 0)

    def watch_restart_outcome(self, restart_id: int, outcome: str, detail: str) -> None:
        self._db.execute(
            "UPDATE watch_restarts SET outcome = ?, detail = ? WHERE id = ?",
            (outcome, detail, restart_id),
        )

    def watch_event(self, watch: str, kind: str, detail: str) -> None:
        """lockout, cleared, recovered, failed, dry-run, …: one line of the watch's story."""
        self._db.execute(
            "INSERT INTO watch_events (watch, at, epoch, kind, detail) VALUES (?, ?, ?, ?, ?)",
            (watch, wall_now(), time.time(), kind, detail),
        )

    def close_open_watch_restarts(self) -> int:
        """Restarts a dead IOC left without an outcome become "interrupted"; how many."""
        cur = self._db.execute(
            "UPDATE watch_restarts SET outcome = 'interrupted', "
            "detail = 'the IOC stopped during the restart' WHERE outcome IS NULL"
        )
        return cur.rowcount

    def watch_history(self, watch: str) -> WatchHistory:
        count, last = self._db.execute(
            "SELECT COUNT(*), MAX(started) FROM watch_restarts WHERE watch = ?", (watch,)
        ).fetchone()
        cleared = self._db.execute(
            "SELECT MAX(epoch) FROM watch_events WHERE watch = ? AND kind = 'cleared'", (watch,)
        ).fetchone()[0]
        since = -1.0 if cleared is None else float(cleared)
        recent = [
            float(row[0])
            for row in self._db.execute(
                "SELECT epoch FROM watch_restarts WHERE watch = ? AND epoch > ? ORDER BY id",
                (watch, since),
            )
        ]
        state = self._db.execute(
            "SELECT kind FROM watch_events WHERE watch = ? AND kind IN ('lockout', 'cleared') "
            "ORDER BY id DESC LIMIT 1",
            (watch,),
        ).fetchone()
        failures = 0
        for (outcome,) in self._db.execute(
            "SELECT outcome FROM watch_restarts WHERE watch = ? AND epoch > ? ORDER BY id DESC",
            (watch, since),
        ):
            if outcome == "recovered":
                break
            failures += 1
        return WatchHistory(
            restart_count=int(count),
            recent=recent,
            locked_out=state is not None and state[0] == "lockout",
            failures=failures,
            last_restart=str(last or ""),
        )

    def watch_restarts(self, watch: str, limit: int = 20) -> list[dict[str, object]]:
        """The most recent restarts of a watch, newest first."""
        cur = self._db.execute(
            "SELECT id, watch, started, manual, iocs, outcome, detail FROM watch_restarts "
            "WHERE watch = ? ORDER BY id DESC LIMIT ?",
            (watch, limit),
        )
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row, strict=True)) for row in cur]
