"""The keeper: nothing a script starts outlives an IOC killed with SIGKILL; a killed keeper
is replaced; with cgroups, a script is in its slot's cgroup before its first statement."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from bgrscrpt_ioc.supervisor import proctree
from bgrscrpt_ioc.supervisor.env import compat_site_dir
from bgrscrpt_ioc.supervisor.guardian import Guardian, KeeperConfig
from devsupport.processes import WAIT_TIMEOUT as TIMEOUT
from devsupport.processes import process_gone, wait_gone

PY = sys.executable
UNIFIED = Path("/sys/fs/cgroup/unified")
CGROUP_ROOT = UNIFIED if (UNIFIED / "cgroup.procs").exists() else Path("/sys/fs/cgroup")

# A script with a grandchild in its group and a daemon (double fork + setsid) that
# ignores SIGTERM; it prints all three pids.
FAMILY = """
import os, signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(w, str(os.getpid()).encode())
        time.sleep(60)
    os._exit(0)
os.close(w)
daemon = int(os.read(r, 32))
os.wait()
print("family", os.getpid(), child.pid, daemon, flush=True)
time.sleep(60)
"""

# An IOC in miniature: a Guardian and one script; it prints what the script printed.
INTERMEDIATE = """
import asyncio, json, os, sys
from bgrscrpt_ioc.supervisor.guardian import Guardian, KeeperConfig
from bgrscrpt_ioc.supervisor.process import ScriptProcess

async def main():
    loop = asyncio.get_running_loop()
    guardian = Guardian(KeeperConfig(**json.loads(sys.argv[1])))
    guardian.start()
    guardian.attach(loop)
    print("keeper", guardian.pid, flush=True)
    await ScriptProcess.spawn(
        [sys.executable, "-c", sys.argv[2]], slot="BGRSCRPT_01", guardian=guardian,
        cwd="/", env=dict(os.environ), loop=loop,
        on_output=lambda data: os.write(1, data), on_exit=lambda code: None,
    )
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def read_line(proc: subprocess.Popen[bytes], word: bytes) -> list[int]:
    """The integers on the first line of ``proc``'s stdout that starts with ``word``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    buf = bytearray()
    readable = asyncio.Event()
    loop.add_reader(fd, readable.set)

    def found() -> list[int] | None:
        for line in bytes(buf).splitlines(keepends=True):
            if line.startswith(word + b" ") and line.endswith(b"\n"):
                return [int(v) for v in line.split()[1:]]
        return None

    async def until_seen() -> list[int]:
        while (values := found()) is None:
            readable.clear()
            await readable.wait()
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError(bytes(buf))
            buf.extend(chunk)
        return values

    try:
        return await asyncio.wait_for(until_seen(), TIMEOUT)
    finally:
        loop.remove_reader(fd)


@pytest.fixture
def strays() -> Iterator[list[int]]:
    """Pids to SIGKILL at the end whatever happened."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest.fixture
def test_cgroup() -> Iterator[Path]:
    if os.geteuid() != 0 or not os.access(CGROUP_ROOT / "cgroup.procs", os.W_OK):
        pytest.skip("needs root and a writable cgroup v2 hierarchy")
    path = CGROUP_ROOT / f"containment-unit-{uuid.uuid4().hex[:8]}"
    path.mkdir()
    yield path
    left = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for sub in left:
        with contextlib.suppress(OSError):
            sub.rmdir()
    path.rmdir()
    assert not left, f"cgroups left behind: {left}"


def cgroup_config(test_cgroup: Path) -> KeeperConfig:
    base = test_cgroup / "bgrscrpt-unit"
    (base / "BGRSCRPT_01").mkdir(parents=True)
    return KeeperConfig(
        instance=uuid.uuid4().hex[:12],
        cgroups={"BGRSCRPT_01": str(base / "BGRSCRPT_01")},
        base=str(base),
    )


async def ioc_killed_leaves_nothing(config: KeeperConfig, strays: list[int]) -> None:
    argv = [PY, "-c", INTERMEDIATE, config.to_json(), FAMILY]
    ioc = subprocess.Popen(argv, stdout=subprocess.PIPE)
    try:
        (keeper,) = await read_line(ioc, b"keeper")
        family = await read_line(ioc, b"family")
        strays.extend([keeper, *family])
        leader, grandchild, daemon = family
        assert psutil.Process(daemon).ppid() == keeper  # adopted: the keeper is a subreaper
        assert os.getsid(daemon) != leader

        ioc.kill()  # SIGKILL: no clean-up code of the IOC runs
        ioc.wait()

        for pid in (leader, grandchild, daemon, keeper):
            await wait_gone(pid)
    finally:
        ioc.kill()
        ioc.wait()
        assert ioc.stdout is not None
        ioc.stdout.close()


async def test_ioc_killed_leaves_no_process_of_its_scripts(strays):
    await ioc_killed_leaves_nothing(KeeperConfig(instance=uuid.uuid4().hex[:12]), strays)


async def test_ioc_killed_leaves_no_process_and_no_cgroup(test_cgroup, strays):
    config = cgroup_config(test_cgroup)
    await ioc_killed_leaves_nothing(config, strays)
    assert config.base is not None and not Path(config.base).exists()


async def test_close_ends_the_keeper_and_whatever_is_left(test_cgroup):
    config = cgroup_config(test_cgroup)
    guardian = Guardian(config)
    guardian.start()
    guardian.attach(asyncio.get_running_loop())
    read_fd, write_fd = os.pipe()
    try:
        pid = await guardian.spawn(
            "BGRSCRPT_01",
            [PY, "-c", "import time; time.sleep(60)"],
            cwd="/",
            env=dict(os.environ),
            out_fd=write_fd,
            on_exit=lambda code: None,
        )
        keeper = guardian.pid
        assert keeper is not None
        guardian.close()
        await wait_gone(keeper)
        assert process_gone(pid)
        assert guardian.pid is None
        assert config.base is not None and not Path(config.base).exists()
        guardian.close()  # idempotent
        guardian.signal("BGRSCRPT_01", signal.SIGTERM)  # after close: ignored, no error
    finally:
        os.close(read_fd)
        os.close(write_fd)
        guardian.close()


async def test_keeper_ignores_termination_signals_and_its_scripts_do_not():
    guardian = Guardian(KeeperConfig(instance=uuid.uuid4().hex[:12]))
    guardian.start()
    guardian.attach(asyncio.get_running_loop())
    exits: list[int] = []
    read_fd, write_fd = os.pipe()
    try:
        pid = await guardian.spawn(
            "BGRSCRPT_01",
            [PY, "-c", "import time; time.sleep(60)"],
            cwd="/",
            env=dict(os.environ),
            out_fd=write_fd,
            on_exit=exits.append,
        )
        keeper = guardian.pid
        assert keeper is not None
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            os.kill(keeper, signum)
        # A signal ignored by the keeper would stay ignored in the script: it is not.
        ignored = int(
            next(
                line.split()[1]
                for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                if line.startswith("SigIgn:")
            ),
            16,
        )
        assert not ignored & (1 << (signal.SIGTERM - 1) | 1 << (signal.SIGHUP - 1))
        os.kill(pid, signal.SIGTERM)
        await wait_gone(pid)
        assert psutil.Process(keeper).status() != psutil.STATUS_ZOMBIE
    finally:
        os.close(read_fd)
        os.close(write_fd)
        guardian.close()


async def test_a_killed_keeper_is_replaced_and_its_runs_end_killed(strays):
    guardian = Guardian(KeeperConfig(instance=uuid.uuid4().hex[:12]))
    guardian.start()
    guardian.attach(asyncio.get_running_loop())
    exited = asyncio.Event()
    codes: list[int] = []

    def on_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    read_fd, write_fd = os.pipe()
    try:
        leader = await guardian.spawn(
            "BGRSCRPT_01",
            [PY, "-c", FAMILY],
            cwd="/",
            env=dict(os.environ),
            out_fd=write_fd,
            on_exit=on_exit,
        )
        os.close(write_fd)
        write_fd = -1
        out = b""
        while b"family" not in out or not out.endswith(b"\n"):
            await asyncio.sleep(0.02)
            with contextlib.suppress(BlockingIOError):
                os.set_blocking(read_fd, False)
                out += os.read(read_fd, 4096)
        _, grandchild, daemon = (int(v) for v in out.split()[1:4])
        strays.extend([leader, grandchild, daemon])
        old = guardian.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        await asyncio.wait_for(exited.wait(), TIMEOUT)
        assert codes == [-signal.SIGKILL]
        for pid in (leader, grandchild, daemon):
            await wait_gone(pid)
        assert guardian.pid not in (None, old)
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        guardian.close()


PLACED = "print(open('/proc/self/cgroup').read().strip().rsplit(':', 1)[1], flush=True)"


async def test_a_script_is_in_its_cgroup_before_its_first_statement(test_cgroup):
    config = cgroup_config(test_cgroup)
    guardian = Guardian(config)
    guardian.start()
    guardian.attach(asyncio.get_running_loop())
    done = asyncio.Event()
    read_fd, write_fd = os.pipe()
    try:
        await guardian.spawn(
            "BGRSCRPT_01",
            [PY, "-c", PLACED],
            cwd="/",
            env=dict(os.environ, PYTHONPATH=str(compat_site_dir())),
            out_fd=write_fd,
            on_exit=lambda code: done.set(),
        )
        os.close(write_fd)
        write_fd = -1
        await asyncio.wait_for(done.wait(), TIMEOUT)
        printed = os.read(read_fd, 4096).decode().strip()
        mount = CGROUP_ROOT.as_posix()
        assert mount + printed == config.cgroups["BGRSCRPT_01"]
    finally:
        os.close(read_fd)
        if write_fd >= 0:
            os.close(write_fd)
        guardian.close()


@pytest.mark.parametrize(
    ("answer", "code", "stderr"),
    [
        (b"1", 0, b""),
        (b"0/sys/fs/cgroup/x: Permission denied", 1, b"x: Permission denied\n"),
        (b"", 1, b"the IOC's keeper is gone\n"),
    ],
)
def test_sitecustomize_runs_the_script_only_once_placed(answer, code, stderr):
    read_fd, write_fd = os.pipe()
    env = dict(os.environ, PYTHONPATH=str(compat_site_dir()), BGRSCRPT_GATE_FD=str(read_fd))
    proc = subprocess.Popen(
        [PY, "-c", "print('ran')"],
        env=env,
        pass_fds=(read_fd,),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    os.close(read_fd)
    os.write(write_fd, answer)
    os.close(write_fd)
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == code
    assert out == (b"ran\n" if code == 0 else b"")
    assert err.endswith(stderr)


async def test_a_stopped_keeper_is_replaced_when_it_does_not_answer(strays):
    """kill -STOP on the keeper: the next STOP is not confirmed in time, so the keeper is
    killed (its script dies with it) and replaced, and the run ends as killed."""
    guardian = Guardian(KeeperConfig(instance=uuid.uuid4().hex[:12]), reply_timeout=0.5)
    guardian.start()
    guardian.attach(asyncio.get_running_loop())
    exited = asyncio.Event()
    codes: list[int] = []

    def on_exit(code: int) -> None:
        codes.append(code)
        exited.set()

    read_fd, write_fd = os.pipe()
    try:
        pid = await guardian.spawn(
            "BGRSCRPT_01",
            [PY, "-c", "import time; time.sleep(60)"],
            cwd="/",
            env=dict(os.environ),
            out_fd=write_fd,
            on_exit=on_exit,
        )
        strays.append(pid)
        old = guardian.pid
        assert old is not None
        os.kill(old, signal.SIGSTOP)
        guardian.signal("BGRSCRPT_01", signal.SIGTERM)
        await asyncio.wait_for(exited.wait(), TIMEOUT)
        assert codes == [-signal.SIGKILL]
        await wait_gone(pid)
        assert process_gone(old)
        assert guardian.pid not in (None, old)
    finally:
        os.close(read_fd)
        os.close(write_fd)
        guardian.close()


def spawn_python(guardian: Guardian, code: str, out_fd: int, on_exit: Any) -> Any:
    """``guardian.spawn`` of ``python -c code`` for BGRSCRPT_01 (a coroutine)."""
    return guardian.spawn(
        "BGRSCRPT_01", [PY, "-c", code], cwd="/", env=dict(os.environ), out_fd=out_fd,
        on_exit=on_exit,
    )  # fmt: skip


async def _ticks_during(awaitable: Any) -> tuple[Any, int]:
    """Await ``awaitable`` while a 20 ms ticker runs: its result (or exception) and how
    often the event loop ticked meanwhile."""
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        try:
            result: Any = await awaitable
        except OSError as exc:
            result = exc
    finally:
        task.cancel()
    return result, ticks


async def test_a_spawn_the_stopped_keeper_never_answers_leaves_the_loop_running(strays):
    """kill -STOP on the keeper, then a START: the event loop runs on (the heartbeat keeps
    its beat) until the keeper is given up on and replaced; the start fails with OSError."""
    guardian = Guardian(KeeperConfig(instance=uuid.uuid4().hex[:12]), reply_timeout=1.0)
    guardian.start()
    guardian.attach(asyncio.get_running_loop())
    old = guardian.pid
    assert old is not None
    strays.append(old)
    read_fd, write_fd = os.pipe()
    try:
        os.kill(old, signal.SIGSTOP)
        spawn = spawn_python(guardian, "import time; time.sleep(60)", write_fd, lambda code: None)
        result, ticks = await _ticks_during(spawn)
        assert isinstance(result, OSError) and "did not answer a start" in str(result), result
        assert ticks >= 20, ticks  # ~50 in the 1 s wait; a blocked loop ticks about once
        await wait_gone(old)
        assert guardian.pid not in (None, old)  # replaced: the next START can run
    finally:
        os.close(read_fd)
        os.close(write_fd)
        guardian.close()


async def test_a_spawn_given_up_while_the_keeper_starts_it_leaves_no_process(strays):
    """A STOP while the keeper is starting the script cancels the wait: the run the keeper
    starts anyway is killed at once, and its exit reaches nobody."""
    instance = uuid.uuid4().hex[:12]
    guardian = Guardian(KeeperConfig(instance=instance))
    guardian.start()
    guardian.attach(asyncio.get_running_loop())
    keeper = guardian.pid
    assert keeper is not None
    strays.append(keeper)
    signals: list[tuple[str, int]] = []
    send_signal = guardian.signal
    guardian.signal = lambda slot, signum: (  # type: ignore[method-assign]
        signals.append((slot, signum)),
        send_signal(slot, signum),
    )[-1]
    exits: list[int] = []
    read_fd, write_fd = os.pipe()
    try:
        os.kill(keeper, signal.SIGSTOP)  # holds the request until the wait is cancelled
        task = asyncio.create_task(
            spawn_python(guardian, "import time; time.sleep(60)", write_fd, exits.append)
        )
        await asyncio.sleep(0)  # the request is sent
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        os.kill(keeper, signal.SIGCONT)
        # The keeper starts it anyway; the IOC kills it as soon as it hears.
        deadline = time.monotonic() + TIMEOUT
        while not signals and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert signals == [("BGRSCRPT_01", signal.SIGKILL)]
        while proctree.marked(instance, "BGRSCRPT_01") and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert proctree.marked(instance, "BGRSCRPT_01") == []
        assert guardian.leaders() == {}
        assert exits == []
        assert guardian.pid == keeper  # an answered request: the keeper was not replaced
    finally:
        os.close(read_fd)
        os.close(write_fd)
        guardian.close()


async def test_an_exit_heard_with_the_spawn_reply_is_delivered_after_spawn_returns():
    """A script that exits at once: the keeper's 'spawned' and 'exited' can arrive in one
    read. The exit is delivered only after spawn() has returned the pid (a runner must
    know its process before it hears that it ended)."""
    guardian = Guardian(KeeperConfig(instance=uuid.uuid4().hex[:12]))
    guardian.start()
    guardian.attach(asyncio.get_running_loop())
    exited = asyncio.Event()
    seen: list[tuple[int, bool]] = []
    held: list[bool] = []  # whether the exit had come with the reply (the case tested)
    claim = guardian._claim
    guardian._claim = lambda pid: (held.append(pid in guardian._held_exits), claim(pid))[-1]  # type: ignore[method-assign]
    read_fd, write_fd = os.pipe()
    try:
        task: asyncio.Task[int] | None = None

        def on_exit(code: int) -> None:
            seen.append((code, task is not None and task.done()))
            exited.set()

        task = asyncio.create_task(
            spawn_python(guardian, "import os; print(os.getpid(), flush=True)", write_fd, on_exit)
        )
        await asyncio.sleep(0)  # the request is sent
        # Block the loop until the script has come and gone, so that both of the
        # keeper's messages wait in the socket for one read.
        pid = int(_read_line_blocking(read_fd))
        deadline = time.monotonic() + TIMEOUT
        while not process_gone(pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the keeper's 'exited' follows the reap by microseconds
        assert await asyncio.wait_for(task, TIMEOUT) == pid
        await asyncio.wait_for(exited.wait(), TIMEOUT)
        assert held == [True], "the exit did not arrive with the reply: nothing was tested"
        assert seen == [(0, True)]
    finally:
        os.close(read_fd)
        os.close(write_fd)
        guardian.close()


def _read_line_blocking(fd: int) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = os.read(fd, 64)
        if not chunk:
            break
        data += chunk
    return data
