"""The state database: every run of every slot, the settings operators wrote, the watches' story.

The IOC works on a copy in memory and never waits on the disk: a change is made
in memory (microseconds, cannot be locked out or run out of space) and queued
for the file, which one thread writes (``state_disk.DiskWriter``). Run and
restart ids are allocated here, so nothing on the event loop needs an answer
from the disk. Reads come from memory.

At start-up the file is read (synchronously: nothing is served yet). A file
SQLite cannot read as a database is moved aside as ``state.sqlite.corrupt-<time>``
with one warning line, and the IOC starts afresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from .state_disk import DiskStatus, DiskWriter, Op, describe_sqlite_error, move_aside
from .var_dir import VarDirInUse, VarDirLock, VarDirUnusable

__all__ = [
    "DiskStatus",
    "OpenRun",
    "StateDB",
    "VarDirInUse",
    "VarDirLock",
    "VarDirUnusable",
    "WatchHistory",
    "wall_now",
]

log = logging.getLogger("bgrscrpt_ioc.state")

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

KEPT_IN_MEMORY = 1000
"""Runs per slot, and restarts and events per watch, that memory keeps (the file keeps all).
Open runs and LOCKOUT events are always kept."""
_PRUNE_EVERY = 200  # inserts between two prunings of memory

START_BUSY_TIMEOUT = 10.0
"""At start-up, how long to wait for another process's lock on the file before giving up."""
CLOSE_TIMEOUT = 5.0
"""At shutdown, how long to go on trying to write what is still queued."""

NOT_SENT = "not sent"
"""A watch restart's outcome when the request reached nothing that could restart
the IOC: it counts neither towards LOCKOUT nor towards the back-off."""


def wall_now() -> str:
    """Wall-clock time for people to read, with the local offset."""
    return datetime.now().astimezone().isoformat(timespec="milliseconds")


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
    was cleared; ``failures``: failed recoveries in a row since the last success;
    ``lockout``: the LOCKOUT's own words (why it locked out) while locked out.
    """

    restart_count: int
    recent: list[float]
    locked_out: bool
    failures: int
    last_restart: str
    lockout: str = ""


def _load(path: Path) -> tuple[sqlite3.Connection, str]:
    """The file's contents in a fresh memory database, and a warning line (or "").

    A file SQLite finds corrupt is moved aside; a file locked for longer than
    START_BUSY_TIMEOUT, or unreadable, is VarDirUnusable.
    """
    memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
    warning = ""
    if path.exists():
        disk: sqlite3.Connection | None = None
        try:
            disk = sqlite3.connect(path, isolation_level=None, timeout=START_BUSY_TIMEOUT)
            found = disk.execute("PRAGMA quick_check").fetchone()[0]
            if found != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {found}")
            disk.backup(memory)
        except sqlite3.Error as exc:
            why, corrupt = describe_sqlite_error(exc)
            if not corrupt and "malformed" not in str(exc):
                raise VarDirUnusable(f"state database {path}: {why}") from None
            if disk is not None:
                disk.close()
                disk = None
            memory.close()
            memory = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
            try:
                kept = move_aside(path, "corrupt")
            except OSError as err:
                raise VarDirUnusable(
                    f"state database {path} is corrupt and cannot be moved aside: "
                    f"{err.strerror or err}"
                ) from None
            name = kept.name if kept is not None else "?"
            warning = (
                f"state database {path} is corrupt ({exc}): moved aside to {name}; "
                "starting afresh (settings written over Channel Access and the watches' "
                "history are lost)"
            )
        finally:
            if disk is not None:
                disk.close()
    memory.executescript(_SCHEMA)
    return memory, warning


class StateDB:
    """Runs, persisted settings and the watches' history. Used from the event loop's thread.

    Every method returns at once: reads come from memory, changes are made in
    memory and queued for the file. ``status`` says how the file is doing;
    :meth:`attach` delivers each new status to the loop.
    """

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._mem, self.start_warning = _load(path)
        self._loaded = path.exists()
        if self.start_warning:
            log.warning("%s", self.start_warning)
        self._restart_base: dict[str, int] = {}
        self._inserts = 0
        self._prune()
        self._next_id = {
            table: int(self._mem.execute(f"SELECT COALESCE(MAX(id), 0) FROM {table}").fetchone()[0])
            + 1
            for table in ("runs", "watch_restarts", "watch_events")
        }
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: Callable[[DiskStatus], None] | None = None
        self._writer = DiskWriter(
            path,
            lock=self._lock,
            snapshot=self._mem.serialize,
            schema=_SCHEMA,
            on_status=self._from_writer,
            loaded=self._loaded,
        )
        self._writer.start()
        self._closed = False

    # ---- the file's health -------------------------------------------------------------

    @property
    def status(self) -> DiskStatus:
        return self._writer.status

    def attach(
        self, loop: asyncio.AbstractEventLoop, listener: Callable[[DiskStatus], None]
    ) -> None:
        """Call ``listener(status)`` on ``loop`` whenever the file's status changes."""
        self._loop, self._listener = loop, listener

    def _from_writer(self, status: DiskStatus) -> None:
        loop, listener = self._loop, self._listener
        if loop is not None and listener is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody to tell
                loop.call_soon_threadsafe(listener, status)

    def unsaved(self) -> list[str]:
        """The changes not yet in the file, in words."""
        with self._lock:
            return self._writer.pending()

    def close(self, timeout: float = CLOSE_TIMEOUT) -> list[str]:
        """Write what is queued (blocking, up to ``timeout`` s) and close; returns what was lost."""
        if self._closed:
            return []
        self._closed = True
        left = self._writer.close(timeout)
        self._report_lost(left)
        with self._lock:
            self._mem.close()
        return left

    async def aclose(self, timeout: float = CLOSE_TIMEOUT) -> list[str]:
        """:meth:`close` without holding the event loop while the file is written."""
        if self._closed:
            return []
        self._closed = True
        left = await asyncio.to_thread(self._writer.close, timeout)
        self._report_lost(left)
        with self._lock:
            self._mem.close()
        return left

    def _report_lost(self, left: list[str]) -> None:
        if left:
            more = f"; and {len(left) - 10} more" if len(left) > 10 else ""
            shown = "; ".join(left[:10]) + more
            log.error(
                "state database %s: %d change(s) could not be saved before exit (%s): %s",
                self.path,
                len(left),
                self.status.problem or "no time left",
                shown,
            )

    # ---- memory and queue -----------------------------------------------------------

    def _change(
        self, sql: str, params: tuple[object, ...], what: str, key: Hashable | None = None
    ) -> int:
        with self._lock:
            count = self._mem.execute(sql, params).rowcount
            self._writer.push(Op(sql, params, what), key)
        return count

    def _insert(self, table: str, sql: str, params: tuple[object, ...], what: str) -> int:
        with self._lock:
            row_id = self._next_id[table]
            self._next_id[table] = row_id + 1
            self._mem.execute(sql, (row_id, *params))
            self._writer.push(Op(sql, (row_id, *params), what))
        self._inserts += 1
        if self._inserts % _PRUNE_EVERY == 0:
            self._prune()
        return row_id

    def _rows(self, sql: str, params: tuple[object, ...] = ()) -> list[tuple]:
        with self._lock:
            return self._mem.execute(sql, params).fetchall()

    def _prune(self) -> None:
        """Keep memory bounded: the newest KEPT_IN_MEMORY rows per slot / watch (not the file)."""
        keep = KEPT_IN_MEMORY
        with self._lock:
            mem = self._mem
            mem.execute(
                "DELETE FROM runs WHERE ended IS NOT NULL AND id NOT IN (SELECT id FROM "
                "(SELECT id, ROW_NUMBER() OVER (PARTITION BY slot ORDER BY id DESC) AS n "
                "FROM runs) WHERE n <= ?)",
                (keep,),
            )
            counts = dict(mem.execute("SELECT watch, COUNT(*) FROM watch_restarts GROUP BY watch"))
            mem.execute(
                "DELETE FROM watch_restarts WHERE id NOT IN (SELECT id FROM "
                "(SELECT id, ROW_NUMBER() OVER (PARTITION BY watch ORDER BY id DESC) AS n "
                "FROM watch_restarts) WHERE n <= ?)",
                (keep,),
            )
            for watch, after in mem.execute(
                "SELECT watch, COUNT(*) FROM watch_restarts GROUP BY watch"
            ).fetchall():
                self._restart_base[watch] = self._restart_base.get(watch, 0) + (
                    counts.get(watch, after) - after
                )
            mem.execute(
                "DELETE FROM watch_events WHERE kind NOT IN ('lockout', 'cleared') AND id NOT IN "
                "(SELECT id FROM (SELECT id, ROW_NUMBER() OVER (PARTITION BY watch "
                "ORDER BY id DESC) AS n FROM watch_events) WHERE n <= ?)",
                (keep,),
            )

    # ---- runs -------------------------------------------------------------------------

    def run_started(self, slot: str, pid: int) -> int:
        """Record a run; its id at once (allocated here, not by the file)."""
        return self._insert(
            "runs",
            "INSERT OR REPLACE INTO runs (id, slot, pid, started) VALUES (?, ?, ?, ?)",
            (slot, pid, wall_now()),
            f"the start of {slot}'s run, pid {pid}",
        )

    def run_ended(self, run_id: int, exit_code: int, cause: str) -> None:
        self._change(
            "UPDATE runs SET ended = ?, exit_code = ?, cause = ? WHERE id = ?",
            (wall_now(), exit_code, cause, run_id),
            f"the end of run {run_id} ({cause}, exit code {exit_code})",
        )

    def open_runs(self) -> list[OpenRun]:
        rows = self._rows("SELECT id, slot, pid FROM runs WHERE ended IS NULL ORDER BY id")
        return [OpenRun(*row) for row in rows]

    def runs(self, slot: str, limit: int = 20) -> list[dict[str, object]]:
        """The most recent runs of a slot, newest first."""
        names = ("id", "slot", "pid", "started", "ended", "exit_code", "cause")
        rows = self._rows(
            f"SELECT {', '.join(names)} FROM runs WHERE slot = ? ORDER BY id DESC LIMIT ?",
            (slot, limit),
        )
        return [dict(zip(names, row, strict=True)) for row in rows]

    # ---- settings ---------------------------------------------------------------------

    def setting(self, slot: str, key: str) -> str | None:
        rows = self._rows("SELECT value FROM settings WHERE slot = ? AND key = ?", (slot, key))
        return None if not rows else str(rows[0][0])

    def set_setting(self, slot: str, key: str, value: str) -> None:
        """Kept at once in memory; queued for the file until written (a newer value replaces it)."""
        self._change(
            "INSERT INTO settings (slot, key, value) VALUES (?, ?, ?) "
            "ON CONFLICT (slot, key) DO UPDATE SET value = excluded.value",
            (slot, key, value),
            f"{slot} {key} = {value}",
            key=("setting", slot, key),
        )

    def clear_setting(self, slot: str, key: str) -> None:
        self._change(
            "DELETE FROM settings WHERE slot = ? AND key = ?",
            (slot, key),
            f"{slot} {key} cleared",
            key=("setting", slot, key),
        )

    def settings_of(self, slot: str) -> dict[str, str]:
        rows = self._rows("SELECT key, value FROM settings WHERE slot = ?", (slot,))
        return {str(key): str(value) for key, value in rows}

    # ---- alarm recovery ----------------------------------------------------------------

    def watch_restart_began(self, watch: str, iocs: list[str], *, manual: bool) -> int:
        """Recorded before anything is sent, so a restart cut short still counts."""
        return self._insert(
            "watch_restarts",
            "INSERT OR REPLACE INTO watch_restarts (id, watch, started, epoch, manual, iocs) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (watch, wall_now(), time.time(), int(manual), " ".join(iocs)),
            f"watch {watch}: a restart of {' '.join(iocs)}",
        )

    def watch_restart_outcome(self, restart_id: int, outcome: str, detail: str) -> None:
        self._change(
            "UPDATE watch_restarts SET outcome = ?, detail = ? WHERE id = ?",
            (outcome, detail, restart_id),
            f"the outcome of restart {restart_id} ({outcome})",
        )

    def watch_event(self, watch: str, kind: str, detail: str) -> None:
        """lockout, cleared, recovered, failed, dry-run, …: one line of the watch's story."""
        self._insert(
            "watch_events",
            "INSERT OR REPLACE INTO watch_events (id, watch, at, epoch, kind, detail) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (watch, wall_now(), time.time(), kind, detail),
            f"watch {watch}: {kind}",
        )

    def close_open_watch_restarts(self) -> int:
        """Restarts a dead IOC left without an outcome become "interrupted"; how many."""
        return self._change(
            "UPDATE watch_restarts SET outcome = 'interrupted', "
            "detail = 'the IOC stopped during the restart' WHERE outcome IS NULL",
            (),
            "restarts cut short marked interrupted",
        )

    def watch_history(self, watch: str) -> WatchHistory:
        with self._lock:
            return self._watch_history(self._mem, watch)

    def _watch_history(self, db: sqlite3.Connection, watch: str) -> WatchHistory:
        count, last = db.execute(
            "SELECT COUNT(*), MAX(started) FROM watch_restarts WHERE watch = ?", (watch,)
        ).fetchone()
        cleared = db.execute(
            "SELECT MAX(epoch) FROM watch_events WHERE watch = ? AND kind = 'cleared'", (watch,)
        ).fetchone()[0]
        since = -1.0 if cleared is None else float(cleared)
        recent = [
            float(row[0])
            for row in db.execute(
                "SELECT epoch FROM watch_restarts WHERE watch = ? AND epoch > ? "
                "AND outcome IS NOT ? ORDER BY id",
                (watch, since, NOT_SENT),
            )
        ]
        state = db.execute(
            "SELECT kind, detail FROM watch_events WHERE watch = ? "
            "AND kind IN ('lockout', 'cleared') ORDER BY id DESC LIMIT 1",
            (watch,),
        ).fetchone()
        failures = 0
        for (outcome,) in db.execute(
            "SELECT outcome FROM watch_restarts WHERE watch = ? AND epoch > ? ORDER BY id DESC",
            (watch, since),
        ):
            if outcome == "recovered":
                break
            if outcome != NOT_SENT:
                failures += 1
        locked_out = state is not None and state[0] == "lockout"
        return WatchHistory(
            restart_count=int(count) + self._restart_base.get(watch, 0),
            recent=recent,
            locked_out=locked_out,
            failures=failures,
            last_restart=str(last or ""),
            lockout=str(state[1]) if locked_out else "",
        )

    def watch_restarts(self, watch: str, limit: int = 20) -> list[dict[str, object]]:
        """The most recent restarts of a watch, newest first."""
        names = ("id", "watch", "started", "manual", "iocs", "outcome", "detail")
        rows = self._rows(
            f"SELECT {', '.join(names)} FROM watch_restarts WHERE watch = ? "
            "ORDER BY id DESC LIMIT ?",
            (watch, limit),
        )
        return [dict(zip(names, row, strict=True)) for row in rows]
