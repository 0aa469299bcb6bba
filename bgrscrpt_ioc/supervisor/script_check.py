"""Can a script run at all? Found out before a process is spent on it, off the event loop.

A missing file, a directory or an unreadable file is seen with one ``stat``.
Whether it compiles is asked of a short-lived Python process: compiling is
CPU-bound and holds the GIL, so a thread would not help (a 300,000-line script
takes over a second to compile, and the IOC's loop would stop for as long).
A file unchanged since it last compiled cleanly is not compiled again.
"""

from __future__ import annotations

import asyncio
import contextlib
import stat
import sys
from pathlib import Path

from .process import setpriv_prefix

CHECK_TIMEOUT = 120.0
"""Longest a compile check may take before the start is given up."""

# Run as `python -I -S -c CHECKER path`: prints nothing when the script compiles,
# else one line saying why. The same interpreter as the scripts, so the same grammar.
CHECKER = """
import sys
path = sys.argv[1]
try:
    with open(path, "rb") as f:
        source = f.read()
except OSError as exc:
    print(f"cannot read script {path}: {exc.strerror or exc}")
    raise SystemExit(0)
try:
    compile(source, path, "exec", dont_inherit=True)
except SyntaxError as exc:
    if exc.lineno is None:  # e.g. NUL bytes, in some 3.11 releases
        print(f"cannot compile {path}: {exc.msg}")
    else:
        print(f"syntax error in {path} line {exc.lineno}: {exc.msg}")
except (ValueError, MemoryError, RecursionError) as exc:
    print(f"cannot compile {path}: {type(exc).__name__}: {exc}")
"""

# path -> the (inode, size, mtime, ctime) of the version that last compiled cleanly.
_compiled: dict[Path, tuple[int, int, int, int]] = {}


def look(path: Path) -> tuple[str, tuple[int, int, int, int] | None]:
    """One stat: (why it cannot run, "" if it may) and the signature to compile, None when
    the file compiled cleanly as it is now (or cannot run)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"no script at {path}", None
    except OSError as exc:
        return f"cannot read script {path}: {exc.strerror or exc}", None
    if not stat.S_ISREG(st.st_mode):
        return f"not a file: {path}", None
    signature = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if _compiled.get(path) == signature:  # ctime: a chmod counts as a change
        return "", None
    return "", signature


async def check_script(path: Path) -> str:
    """Why ``path`` cannot be run, or "" when it can. Never holds the event loop for long."""
    problem, signature = look(path)
    if problem or signature is None:
        return problem
    problem = await _compile_elsewhere(path)
    if not problem:
        _compiled[path] = signature
    return problem


async def _compile_elsewhere(path: Path) -> str:
    try:
        proc = await asyncio.create_subprocess_exec(
            *setpriv_prefix(),  # dies with the IOC, like a script
            sys.executable,
            "-I",
            "-S",
            "-c",
            CHECKER,
            str(path),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return f"cannot check script {path}: {exc.strerror or exc}"
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            out, err = await proc.communicate()
    except BaseException:  # a timeout, or the IOC stopping: the checker goes too
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await asyncio.shield(proc.wait())
        if isinstance(sys.exc_info()[1], TimeoutError):
            return f"cannot check script {path}: compiling took longer than {CHECK_TIMEOUT:g} s"
        raise
    if proc.returncode != 0:
        last = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        return f"cannot check script {path}: the check exited with {proc.returncode}: {last[0]}"
    return out.decode("utf-8", "replace").strip()
