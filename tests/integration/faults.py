"""Faults the real world does to the IOC's var dir, for the fault tests: another process
holding SQLite's write lock, a full disk (a small tmpfs), reading what the file holds."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Ioc


@contextlib.contextmanager
def write_lock_held(path: Path) -> Iterator[subprocess.Popen]:
    """Another process holds SQLite's write lock on ``path`` (BEGIN IMMEDIATE) until the end."""
    code = (
        "import sqlite3, sys\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=10)\n"
        "db.execute('BEGIN IMMEDIATE')\n"
        "print('locked', flush=True)\n"
        "sys.stdin.read()\n"
        "db.execute('ROLLBACK')\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)
        assert proc.stdout is not None
        proc.stdout.close()


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (root only: the test is skipped otherwise)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where.mkdir(parents=True, exist_ok=True)
    name = f"faults-{uuid.uuid4().hex[:8]}"  # the branch's prefix: no clash with others
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", name, str(where)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill_disk(directory: Path) -> Path:
    """Write a file in ``directory`` until the file system is full; return it."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as out:
        with contextlib.suppress(OSError):
            while True:
                out.write(chunk)
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 512)
    return filler


def saved_settings(var_dir: Path) -> dict[tuple[str, str], str]:
    """What the state database file holds of the settings (read-only, beside the IOC)."""
    path = var_dir / "state.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        rows = db.execute("SELECT slot, key, value FROM settings").fetchall()
    return {(slot, key): value for slot, key, value in rows}


def saved_runs(var_dir: Path, slot: str = "BGRSCRPT_01") -> list[tuple]:
    path = var_dir / "state.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        return db.execute(
            "SELECT pid, ended IS NOT NULL, exit_code, cause FROM runs WHERE slot = ? ORDER BY id",
            (slot,),
        ).fetchall()


def ioc_msg(ioc: Ioc) -> tuple[str, str]:
    """``BGRSCRPT:MSG`` and its severity, fresh from the IOC."""
    text = ioc.get("BGRSCRPT:MSG", as_string=True) or ""
    severity = ioc.get("BGRSCRPT:MSG.SEVR", as_string=True) or ""
    return text, severity
