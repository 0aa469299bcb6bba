"""The guardian: no script, nor anything in its group, outlives an IOC killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys

import psutil
import pytest

from bgrscrpt_ioc.supervisor.guardian import Guardian
from tests.unit.processes import TIMEOUT, gone, wait_gone

PY = sys.executable

# An IOC in miniature: a Guardian, one script (leader + grandchild in its group)
# registered with it, and one process registered then removed.
INTERMEDIATE = """
import asyncio, os, subprocess, sys
from bgrscrpt_ioc.supervisor.guardian import Guardian
from bgrscrpt_ioc.supervisor.process import ScriptProcess

SCRIPT = '''
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print("grandchild", child.pid, flush=True)
time.sleep(60)
'''

async def main():
    loop = asyncio.get_running_loop()
    guardian = Guardian()
    guardian.start()
    print("guardian", guardian.pid, flush=True)
    script = ScriptProcess.spawn(
        [sys.executable, "-c", SCRIPT], cwd="/", env=dict(os.environ), loop=loop,
        on_output=lambda data: os.write(1, data), on_exit=lambda code: None,
    )
    guardian.add(script.pid)
    print("script", script.pid, flush=True)
    released = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    guardian.add(released.pid)
    guardian.remove(released.pid)
    print("released", released.pid, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                members.append(proc.pid)
        except (ProcessLookupError, psutil.NoSuchProcess):
            pass
    return members


async def read_numbers(proc: subprocess.Popen[bytes], words: list[bytes]) -> dict[bytes, int]:
    """Read lines ``<word> <int>`` from ``proc``'s stdout until every word has been seen."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    buf = bytearray()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)

    def found() -> dict[bytes, int]:
        lines = [ln.split() for ln in bytes(buf).splitlines()]
        return {ln[0]: int(ln[1]) for ln in lines if len(ln) == 2 and ln[1].isdigit()}

    async def until_seen() -> None:
        while not all(w in found() for w in words):
            readable.clear()
            await readable.wait()
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError(bytes(buf))
            buf.extend(chunk)

    try:
        await asyncio.wait_for(until_seen(), TIMEOUT)
    finally:
        loop.remove_reader(fd)
    return found()


@pytest.fixture
def strays():
    """Pids to SIGKILL at the end whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_ioc_killed_leaves_no_process_of_the_group(strays):
    ioc = subprocess.Popen([PY, "-c", INTERMEDIATE], stdout=subprocess.PIPE)
    try:
        seen = await read_numbers(ioc, [b"guardian", b"script", b"grandchild", b"released"])
        strays.extend(seen.values())
        script, grandchild = seen[b"script"], seen[b"grandchild"]
        assert os.getpgid(grandchild) == script
        assert sorted(group_members(script)) == sorted([script, grandchild])

        ioc.kill()  # SIGKILL: no clean-up code of the IOC runs
        ioc.wait()

        # PDEATHSIG takes the leader; the guardian the grandchild, then exits.
        for pid in (script, grandchild, seen[b"guardian"]):
            await wait_gone(pid)
        assert group_members(script) == []
        # What was removed from the guardian is left alone.
        assert not gone(seen[b"released"])
    finally:
        ioc.kill()
        ioc.wait()
        assert ioc.stdout is not None
        ioc.stdout.close()


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([PY, "-c", "import time; time.sleep(60)"], start_new_session=True)


async def test_close_ends_the_guardian_killing_nothing():
    guardian = Guardian()
    guardian.start()
    target = sleeper()
    try:
        guardian_pid = guardian.pid
        assert guardian_pid is not None
        guardian.add(target.pid)
        guardian.close()
        await wait_gone(guardian_pid)
        assert guardian.pid is None
        assert target.poll() is None  # still running
        guardian.close()  # idempotent
        guardian.add(target.pid)  # after close: ignored, no error
    finally:
        target.kill()
        target.wait()


async def test_guardian_ignores_termination_signals_and_kills_on_eof():
    guardian = Guardian()
    guardian.start()
    target = sleeper()
    try:
        guardian.add(target.pid)
        proc = guardian._proc
        assert proc is not None and proc.stdin is not None
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(proc.pid, signum)
        # The IOC's end of the pipe closes, as when the IOC dies.
        proc.stdin.close()
        await asyncio.wait_for(asyncio.to_thread(target.wait), TIMEOUT)
        assert target.returncode == -signal.SIGKILL
        assert await asyncio.wait_for(asyncio.to_thread(proc.wait), TIMEOUT) == 0
    finally:
        target.kill()
        target.wait()
        guardian.close()
