"""The state database's file, written by one thread: the event loop never waits on the disk.

The IOC holds the whole state database in memory (``state_db.StateDB``) and
hands every change to a :class:`DiskWriter` as one SQL statement. The writer's
thread applies what is queued to the file in one transaction, in order. When
that fails (another process holds SQLite's write lock, the disk is full, a
read-only remount, an I/O error) nothing is dropped: the changes stay queued,
the failure is reported in words (:class:`DiskStatus`), and the writer tries
again every second or two until it succeeds.

Before each write, and once a second when idle, the writer checks that the
file at the path is still the one it opened (device and inode) and has not
shrunk. A file deleted, replaced or truncated under the IOC, or one SQLite
finds corrupt, is written afresh from the memory image (what was there is
moved aside, never deleted): the current settings, the open runs and the
recent history survive.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bgrscrpt_ioc.state")

BUSY_TIMEOUT_MS = 250
"""How long one write waits for another process's lock (in the writer's thread)."""
RETRY_FIRST, RETRY_MAX = 0.5, 2.0
"""A failed write is tried again after RETRY_FIRST seconds, doubling up to RETRY_MAX."""
CHECK_INTERVAL = 1.0
"""When idle, the file is checked (deleted? replaced? truncated?) this often."""
MAX_BATCH = 500
"""Changes written in one transaction at most."""
GATHER = 0.02
"""How long the writer waits, once a change arrives, for more to write with it.

A change wakes the writer only when nothing is queued; the changes that follow
within GATHER join the same transaction. Without it, a client putting settings
back to back woke the writer's thread (and took its turn at the GIL, its file
locks and its write) once per put: about 0.15 ms of CPU per put, which made the
IOC's put round trip half as slow again as EPICS base's."""


@dataclass(frozen=True)
class Op:
    """One change for the file: an SQL statement, and what it means in words."""

    sql: str
    params: tuple[object, ...]
    what: str


@dataclass(frozen=True)
class DiskStatus:
    """How the file is doing, for the IOC's MSG PV and log.

    ``saving``: every change has reached the file (or is about to); False while
    writes fail, ``problem`` then says why and ``since`` (wall time) since when.
    ``note``: the last event worth telling (written afresh, moved aside), or "".
    """

    saving: bool = True
    problem: str = ""
    pending: int = 0
    since: float = 0.0
    note: str = ""


class _Lost(Exception):
    """The file at the path is not the database the IOC writes: write it afresh."""

    def __init__(self, why: str, aside: str):
        super().__init__(why)
        self.why = why
        self.aside = aside  # suffix for what is there now ("" when nothing to keep)


class _Failed(Exception):
    """A write failed for a reason that may pass (locked, full, read-only…)."""


def describe_sqlite_error(exc: BaseException) -> tuple[str, bool]:
    """(the failure in words, whether the file is unusable as a database)."""
    if isinstance(exc, OSError) and not isinstance(exc, sqlite3.Error):
        return (exc.strerror or str(exc)), False
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc)
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return "the database is locked by another process", False
    if name.startswith("SQLITE_FULL") or "disk is full" in text:
        return "the disk is full", False
    if name.startswith("SQLITE_READONLY"):
        return "the database or its directory is read-only", False
    if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "no such table" in text:
        return f"the file is corrupt ({text})", True
    if name.startswith("SQLITE_IOERR"):
        return f"disk I/O error ({name})", False
    if name.startswith("SQLITE_CANTOPEN"):
        return "cannot open the file", False
    return text or type(exc).__name__, False


def aside_name(path: Path, what: str) -> Path:
    """``state.sqlite.corrupt-20250102T030405``: where a bad or foreign file is kept."""
    stamp = time.strftime("%Y%m%dT%H%M%S")
    candidate = path.with_name(f"{path.name}.{what}-{stamp}")
    n = 1
    while os.path.lexists(candidate):
        n += 1
        candidate = path.with_name(f"{path.name}.{what}-{stamp}.{n}")
    return candidate


def move_aside(path: Path, what: str, *, sidecars: bool = True) -> Path | None:
    """Rename ``path`` out of the way, with its -wal and -shm when ``sidecars``; None when
    there was nothing."""
    if not os.path.lexists(path):
        return None
    target = aside_name(path, what)
    os.rename(path, target)
    for side in ("-wal", "-shm") if sidecars else ():
        with contextlib.suppress(FileNotFoundError):
            os.rename(f"{path}{side}", f"{target}{side}")
    return target


class DiskWriter:
    """The thread that owns the file. Everything here but :meth:`push` runs in that thread.

    ``lock`` is the memory database's lock: :meth:`push` is called with it held,
    so a change is in memory and queued together, and the image written afresh
    (``snapshot``, called with the lock held) holds exactly what was queued.
    ``on_status`` is called from the writer's thread.
    """

    def __init__(
        self,
        path: Path,
        *,
        lock: threading.Lock,
        snapshot: Callable[[], bytes],
        schema: str,
        on_status: Callable[[DiskStatus], None],
        loaded: bool,
    ):
        """``loaded``: memory was read from a file at the path (missing now: it was deleted)."""
        self.path = path
        self._loaded = loaded
        self._cond = threading.Condition(lock)
        self._snapshot = snapshot
        self._schema = schema
        self._on_status = on_status
        self._ops: dict[Hashable, Op] = {}  # in order; a keyed change replaces its older self
        self._seq = 0
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._size = 0
        self._afresh: _Lost | None = None  # set: the file must be written afresh
        self._closing = False
        self._abandon = False
        self.status = DiskStatus()
        self._thread = threading.Thread(target=self._run, name="state-db-writer", daemon=True)

    # ---- the caller's side ---------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def push(self, op: Op, key: Hashable | None = None) -> None:
        """Queue ``op`` (hold the lock). A ``key`` replaces a queued change with the same key."""
        idle = not self._ops  # the writer waits for a first change, then gathers
        if key is None:
            self._seq += 1
            key = ("#", self._seq)
        else:
            self._ops.pop(key, None)  # moves to the end: it is the newest change now
        self._ops[key] = op
        if idle:
            self._cond.notify()

    def pending(self) -> list[str]:
        """What has not reached the file yet, in words (hold the lock)."""
        out = [op.what for op in self._ops.values()]
        if self._afresh is not None:
            out.insert(0, "the whole database (to be written afresh)")
        return out

    def close(self, timeout: float) -> list[str]:
        """Write what is queued (for up to ``timeout`` s), stop; return what could not be saved."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        with self._cond:
            self._abandon = True
            self._cond.notify()
            left = self.pending()
        if not self._thread.is_alive():
            self._close_conn()
        return left

    # ---- the writer's thread -----------------------------------------------------------

    def _run(self) -> None:
        delay = RETRY_FIRST
        last_check = 0.0
        while True:
            with self._cond:
                if not self._ops and self._afresh is None and not self._closing:
                    self._cond.wait(CHECK_INTERVAL)
                if self._ops and not self._closing and not self._abandon:
                    self._cond.wait(GATHER)  # only close() cuts this short
                if self._abandon:
                    return
                if self._closing and not self._ops and self._afresh is None:
                    return
                batch = list(self._ops.items())[:MAX_BATCH]
            try:
                if self._conn is None or batch or time.monotonic() - last_check >= CHECK_INTERVAL:
                    last_check = time.monotonic()
                    self._check_file()
                if self._afresh is not None:
                    self._write_afresh(self._afresh)
                elif batch:
                    self._write(batch)
            except _Lost as lost:
                with self._cond:
                    self._afresh = lost
                continue  # written afresh on the next round, at once
            except _Failed as failed:
                self._report_failure(str(failed))
                with self._cond:
                    if not self._abandon:
                        self._cond.wait(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            except Exception as exc:  # a bug: keep the thread, and the changes, alive
                log.exception("state database: writing failed")
                self._report_failure(f"{type(exc).__name__}: {exc}")
                time.sleep(RETRY_MAX)
                continue
            delay = RETRY_FIRST
            self._report_saving()

    def _check_file(self) -> None:
        """Raise _Lost when the path no longer holds the file the writer opened."""
        if self._afresh is not None:
            return
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if not self._loaded:
                self._open()  # a new database: created, then the queue replayed into it
                return
            raise _Lost("deleted while the IOC was running", "") from None
        except OSError as exc:
            raise _Failed(f"cannot look at the file: {exc.strerror or exc}") from None
        identity = (st.st_dev, st.st_ino)
        if self._identity is None:
            self._open()
        elif identity != self._identity:
            raise _Lost("replaced while the IOC was running", "replaced")
        elif st.st_size < self._size:
            raise _Lost(
                f"truncated while the IOC was running ({self._size} -> {st.st_size} bytes)",
                "truncated" if st.st_size else "",
            )

    def _open(self) -> None:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise _Failed(describe_sqlite_error(exc)[0]) from None
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.executescript(self._schema)
            st = os.stat(self.path)
        except (sqlite3.Error, OSError) as exc:
            conn.close()
            why, corrupt = describe_sqlite_error(exc)
            if corrupt:
                raise _Lost(f"found corrupt ({why})", "corrupt") from None
            raise _Failed(why) from None
        self._conn = conn
        self._identity = (st.st_dev, st.st_ino)
        self._size = st.st_size
        self._loaded = True  # from now on, a missing file is one that was deleted

    def _write(self, batch: list[tuple[Hashable, Op]]) -> None:
        conn = self._conn
        assert conn is not None
        try:
            conn.execute("BEGIN IMMEDIATE")
            for _, op in batch:
                conn.execute(op.sql, op.params)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            why, corrupt = describe_sqlite_error(exc)
            if corrupt:
                raise _Lost(f"found corrupt ({why})", "corrupt") from None
            raise _Failed(why) from None
        with contextlib.suppress(OSError):
            self._size = max(self._size, os.stat(self.path).st_size)
        with self._cond:
            for key, op in batch:
                if self._ops.get(key) is op:  # not replaced by a newer change meanwhile
                    del self._ops[key]

    def _write_afresh(self, lost: _Lost) -> None:
        """Replace whatever is at the path by the memory image, atomically."""
        with self._cond:
            image = self._snapshot()
            queued = dict(self._ops)  # all in the image
        self._close_conn()
        tmp = self.path.with_name(self.path.name + ".new")
        try:
            # The -wal and -shm at the path are the writer's own (what they held is in
            # memory): kept beside a stranger's file they would corrupt it when opened.
            kept = move_aside(self.path, lost.aside, sidecars=False) if lost.aside else None
            for suffix in ("-wal", "-shm") if lost.aside else ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(f"{self.path}{suffix}")
            with open(tmp, "wb") as out:
                out.write(image)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
            _fsync_dir(self.path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise _Failed(f"cannot write it afresh: {exc.strerror or exc}") from None
        with self._cond:
            self._afresh = None
            for key, op in queued.items():
                if self._ops.get(key) is op:
                    del self._ops[key]
        self._open()  # may raise _Failed: the next round opens it again
        if lost.why:
            where = f"; what was there is kept as {kept.name}" if kept is not None else ""
            note = f"{lost.why}: written afresh from memory at {time.strftime('%H:%M:%S')}{where}"
            log.warning("state database %s: %s", self.path, note)
            self._set_status(DiskStatus(note=note))

    def _close_conn(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None
        self._identity = None

    # ---- status ---------------------------------------------------------------------------

    def _report_failure(self, problem: str) -> None:
        with self._cond:
            pending = len(self.pending())
        old = self.status
        if old.saving or old.problem != problem:
            log.error(
                "state database %s: cannot save: %s; %d change(s) kept in memory, retrying",
                self.path,
                problem,
                pending,
            )
        since = old.since if not old.saving else time.time()
        self._set_status(DiskStatus(False, problem, pending, since, old.note))

    def _report_saving(self) -> None:
        old = self.status
        if old.saving:
            return
        took = time.time() - old.since
        note = f"saved again at {time.strftime('%H:%M:%S')} after {took:.0f} s ({old.problem})"
        log.warning("state database %s: %s", self.path, note)
        self._set_status(DiskStatus(note=note))

    def _set_status(self, status: DiskStatus) -> None:
        self.status = status
        try:
            self._on_status(status)
        except Exception:  # the listener's bug must not stop the writer
            log.exception("state database: reporting the status failed")


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
