"""ScriptProcess through a real keeper: exit, output, sessions, signals to a whole slot.

The keeper runs without cgroups here (subreaper and marker); test_guardian.py and
the integration tests cover the cgroup mechanism.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid

import psutil
import pytest

from bgrscrpt_ioc.supervisor.env import compat_site_dir
from bgrscrpt_ioc.supervisor.guardian import Guardian, KeeperConfig
from bgrscrpt_ioc.supervisor.process import ScriptProcess
from devsupport.processes import WAIT_TIMEOUT as TIMEOUT
from devsupport.processes import process_gone, wait_gone

PY = sys.executable

# A grandchild that sleeps holding the script's stdout, ignoring SIGTERM; its pid is
# printed, then "ignoring" once it ignores SIGTERM.
GRANDCHILD = """
import subprocess, sys
code = (
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "print('ignoring', flush=True); time.sleep(60)"
)
child = subprocess.Popen([sys.executable, "-c", code], start_new_session={escape})
print("grandchild", child.pid, flush=True)
"""


@pytest.fixture
async def guardian():
    keeper = Guardian(KeeperConfig(instance=uuid.uuid4().hex[:12]))
    keeper.start()
    keeper.attach(asyncio.get_running_loop())
    yield keeper
    keeper.close()


class Run:
    """A script under ScriptProcess, with what it reported."""

    def __init__(
        self,
        code: str,
        guardian: Guardian,
        slot: str,
        loop: asyncio.AbstractEventLoop,
        env: dict[str, str] | None = None,
    ) -> None:
        self.output = bytearray()
        self.exit_codes: list[int] = []
        self.exited = asyncio.Event()
        self._changed = asyncio.Event()
        self._args = (code, guardian, slot, loop, env)

    async def spawn(self) -> None:
        code, guardian, slot, loop, env = self._args
        self.proc = await ScriptProcess.spawn(
            [PY, "-c", textwrap.dedent(code)],
            slot=slot,
            guardian=guardian,
            cwd=os.getcwd(),
            env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})),
            on_output=self._on_output,
            on_exit=self._on_exit,
            loop=loop,
        )

    def _on_output(self, data: bytes) -> None:
        self.output += data
        self._changed.set()

    def _on_exit(self, code: int) -> None:
        self.exit_codes.append(code)
        self.exited.set()

    async def expect(self, text: bytes, timeout: float = TIMEOUT) -> None:
        async def until_seen() -> None:
            while text not in self.output:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(until_seen(), timeout)

    def value_after(self, word: bytes) -> int:
        line = next(ln for ln in self.output.splitlines() if ln.startswith(word + b" "))
        return int(line.split()[1])

    async def wait_exit(self, timeout: float = TIMEOUT) -> int:
        await asyncio.wait_for(self.exited.wait(), timeout)
        return self.exit_codes[-1]

    async def finish(self) -> None:
        """Leave nothing behind: kill, wait for the exit, close."""
        self.proc.signal_all(signal.SIGKILL)
        await self.wait_exit()
        self.proc.close()


@pytest.fixture
async def runs(guardian):
    started: list[Run] = []
    loop = asyncio.get_running_loop()

    async def start(code: str, env: dict[str, str] | None = None, slot: str = "") -> Run:
        run = Run(code, guardian, slot or f"BGRSCRPT_{len(started) + 1:02d}", loop, env)
        await run.spawn()
        started.append(run)
        return run

    yield start
    for run in started:
        await run.finish()


async def test_exit_code_and_output(runs):
    run = await runs("import sys; print('hello'); sys.stderr.write('oops\\n'); sys.exit(3)")
    assert await run.wait_exit() == 3
    assert run.proc.returncode == 3
    assert run.exit_codes == [3]
    # Everything printed before the exit arrived before on_exit: stdout and stderr in one pipe.
    assert b"hello\n" in run.output and b"oops\n" in run.output


async def test_leader_of_its_own_session_and_group_under_the_keeper(runs, guardian):
    run = await runs("import os, time; print('up', os.environ['BGRSCRPT_MARK']); time.sleep(60)")
    await run.expect(f"up {guardian.config.instance}/BGRSCRPT_01\n".encode())
    pid = run.proc.pid
    assert os.getpgid(pid) == pid
    assert os.getsid(pid) == pid
    assert psutil.Process(pid).ppid() == guardian.pid
    run.proc.signal_all(signal.SIGKILL)
    assert await run.wait_exit() == -signal.SIGKILL


async def test_signals_reach_every_process_of_the_slot_in_any_session(runs):
    run = await runs(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('TERM ignored', flush=True))\n"
        + GRANDCHILD.format(escape=True)
        + "print('up', flush=True)\nwhile True: time.sleep(60)\n"
    )
    await run.expect(b"up")
    await run.expect(b"ignoring")
    escaped = run.value_after(b"grandchild")
    assert os.getsid(escaped) != os.getsid(run.proc.pid)

    run.proc.signal_all(signal.SIGTERM)
    await run.expect(b"TERM ignored")  # delivered, and ignored, as the script wants
    assert not run.exited.is_set() and not process_gone(escaped)

    run.proc.signal_all(signal.SIGKILL)
    assert await run.wait_exit() == -signal.SIGKILL
    await wait_gone(escaped)
    run.proc.signal_all(signal.SIGKILL)  # exited: a no-op, no error


@pytest.mark.parametrize("escape", [False, True])
async def test_exit_kills_what_the_script_left_in_any_session(runs, escape):
    # The grandchild holds the pipe open: the exit is seen at once all the same.
    run = await runs(GRANDCHILD.format(escape=escape) + "import sys; sys.exit(5)\n")
    assert await run.wait_exit() == 5
    await wait_gone(run.value_after(b"grandchild"))


async def test_a_daemon_adopted_by_the_keeper_is_killed_with_its_slot(runs, guardian):
    daemon = """
    import os, signal, time
    r, w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(w, str(os.getpid()).encode())
            time.sleep(60)
        os._exit(0)
    os.close(w)
    print("daemon", int(os.read(r, 32)), flush=True)
    os.wait()
    print("up", flush=True)
    time.sleep(60)
    """
    run = await runs(daemon)
    other = await runs("import time; print('up', flush=True); time.sleep(60)")
    await run.expect(b"up")
    await other.expect(b"up")
    pid = run.value_after(b"daemon")
    assert psutil.Process(pid).ppid() == guardian.pid  # adopted: the keeper is a subreaper
    run.proc.signal_all(signal.SIGTERM)
    assert await run.wait_exit() == -signal.SIGTERM
    await wait_gone(pid)
    assert not other.exited.is_set()  # another slot is left alone


async def test_all_output_arrives(runs):
    size = 3_000_000
    run = await runs(f"import sys; sys.stdout.buffer.write(b'x' * {size}); sys.exit(0)")
    assert await run.wait_exit() == 0

    # Output drained at the exit, the rest (if any) still comes after it.
    async def all_in() -> None:
        while len(run.output) < size:
            run._changed.clear()
            await run._changed.wait()

    await asyncio.wait_for(all_in(), TIMEOUT)
    assert len(run.output) == size


def open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    ("argv", "cwd"),
    [(["/nonexistent/script"], "/"), ([PY, "-c", "pass"], "/nonexistent/dir")],
)
async def test_spawn_failure_raises_and_leaves_nothing(guardian, argv, cwd):
    loop = asyncio.get_running_loop()
    before_fds = open_fds()
    assert guardian.pid is not None
    before_children = {p.pid for p in psutil.Process(guardian.pid).children()}
    with pytest.raises(FileNotFoundError):
        await ScriptProcess.spawn(
            argv,
            slot="BGRSCRPT_01",
            guardian=guardian,
            cwd=cwd,
            env={},
            on_output=lambda data: None,
            on_exit=lambda code: None,
            loop=loop,
        )
    assert open_fds() == before_fds
    assert {p.pid for p in psutil.Process(guardian.pid).children()} == before_children


async def test_close_is_idempotent(runs):
    run = await runs("pass")
    assert await run.wait_exit() == 0
    run.proc.close()
    run.proc.close()


PARENT_CHECK = "import os; print('ran', os.environ.get('BGRSCRPT_IOC_PID'), flush=True)"


@pytest.mark.parametrize("parent_is_keeper", [True, False])
def test_sitecustomize_ends_a_script_whose_keeper_died_while_starting_it(parent_is_keeper):
    """Started by setpriv after the keeper died, a script has another parent: it ends
    before its first statement. With the right parent it runs, without the variable."""
    pid = os.getpid() if parent_is_keeper else os.getppid()
    env = dict(os.environ, PYTHONPATH=str(compat_site_dir()), BGRSCRPT_IOC_PID=str(pid))
    out = subprocess.run([PY, "-c", PARENT_CHECK], env=env, capture_output=True, timeout=TIMEOUT)
    if parent_is_keeper:
        assert (out.returncode, out.stdout) == (0, b"ran None\n"), out.stderr
    else:
        assert (out.returncode, out.stdout, out.stderr) == (1, b"", b"")


async def test_a_script_started_by_the_keeper_passes_the_parent_check(runs, guardian):
    assert guardian.uses_setpriv, "setpriv (util-linux) is expected on this machine"
    run = await runs(PARENT_CHECK, {"PYTHONPATH": str(compat_site_dir())})
    assert await run.wait_exit() == 0
    await run.expect(b"ran None\n")
