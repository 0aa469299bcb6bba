"""ScriptProcess against real processes: exit, output, process groups, PDEATHSIG."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from bgrscrpt_ioc.supervisor.env import compat_site_dir
from bgrscrpt_ioc.supervisor.process import ScriptProcess, setpriv_prefix
from tests.unit.processes import TIMEOUT, gone, wait_gone

PY = sys.executable

# A grandchild that sleeps holding the script's stdout; its pid is printed.
GRANDCHILD = """
import subprocess, sys
code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
child = subprocess.Popen([sys.executable, "-c", code], start_new_session={escape})
print("grandchild", child.pid, flush=True)
"""


class Run:
    """A script under ScriptProcess, with what it reported."""

    def __init__(
        self, code: str, loop: asyncio.AbstractEventLoop, env: dict[str, str] | None = None
    ) -> None:
        self.output = bytearray()
        self.exit_codes: list[int] = []
        self.exited = asyncio.Event()
        self._changed = asyncio.Event()
        self.proc = ScriptProcess.spawn(
            [PY, "-c", textwrap.dedent(code)],
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
        self.proc.kill_group(signal.SIGKILL)
        await self.wait_exit()
        self.proc.close()


@pytest.fixture
async def runs():
    started: list[Run] = []
    loop = asyncio.get_running_loop()

    def start(code: str, env: dict[str, str] | None = None) -> Run:
        run = Run(code, loop, env)
        started.append(run)
        return run

    yield start
    for run in started:
        await run.finish()


@pytest.fixture
def strays():
    """Pids a test may leave alive on purpose (escaped grandchildren): killed at the end."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


async def test_exit_code_and_output(runs):
    run = runs("import sys; print('hello'); sys.stderr.write('oops\\n'); sys.exit(3)")
    assert await run.wait_exit() == 3
    assert run.proc.returncode == 3
    assert run.exit_codes == [3]
    # Everything printed before the exit arrived before on_exit: stdout and stderr in one pipe.
    assert b"hello\n" in run.output and b"oops\n" in run.output


async def test_leader_of_its_own_session_and_group(runs):
    run = runs("import time; print('up'); time.sleep(60)")
    await run.expect(b"up")
    pid = run.proc.pid
    assert os.getpgid(pid) == pid
    assert os.getsid(pid) == pid
    run.proc.kill_group(signal.SIGKILL)
    assert await run.wait_exit() == -signal.SIGKILL


async def test_kill_group_reaches_grandchild_holding_the_pipe(runs):
    run = runs(
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: print('TERM ignored', flush=True))\n"
        + GRANDCHILD.format(escape=False)
        + "print('up', flush=True)\nwhile True: time.sleep(60)\n"
    )
    await run.expect(b"up")
    grandchild = run.value_after(b"grandchild")
    assert os.getpgid(grandchild) == run.proc.pid

    run.proc.kill_group(signal.SIGTERM)
    await run.expect(b"TERM ignored")  # delivered, and ignored, as the script wants
    assert not run.exited.is_set()

    run.proc.kill_group(signal.SIGKILL)
    assert await run.wait_exit() == -signal.SIGKILL
    await wait_gone(grandchild)
    assert gone(run.proc.pid) and gone(grandchild)
    run.proc.kill_group(signal.SIGKILL)  # reaped: a no-op, no error


async def test_exit_while_grandchild_in_group_holds_pipe_kills_it(runs):
    run = runs(GRANDCHILD.format(escape=False) + "import sys; sys.exit(0)\n")
    # The exit is seen at once; the group's leftovers are killed with it.
    assert await run.wait_exit() == 0
    grandchild = run.value_after(b"grandchild")
    await wait_gone(grandchild)


async def test_exit_seen_while_escaped_grandchild_holds_pipe(runs, strays):
    # A grandchild in its own session escapes the group kill and keeps the pipe open:
    # exit detection must not wait for output EOF.
    run = runs(GRANDCHILD.format(escape=True) + "import sys; sys.exit(5)\n")
    assert await run.wait_exit() == 5
    grandchild = run.value_after(b"grandchild")
    strays.append(grandchild)
    assert not gone(grandchild)
    os.kill(grandchild, signal.SIGKILL)
    await wait_gone(grandchild)


async def test_all_output_arrives(runs):
    size = 3_000_000
    run = runs(f"import sys; sys.stdout.buffer.write(b'x' * {size}); sys.exit(0)")
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
async def test_spawn_failure_raises_and_leaves_nothing(argv, cwd):
    loop = asyncio.get_running_loop()
    before_fds = open_fds()
    before_children = {p.pid for p in psutil.Process().children()}
    with pytest.raises(FileNotFoundError):
        ScriptProcess.spawn(
            argv,
            cwd=cwd,
            env={},
            on_output=lambda data: None,
            on_exit=lambda code: None,
            loop=loop,
        )
    assert open_fds() == before_fds
    assert {p.pid for p in psutil.Process().children()} == before_children


async def test_close_is_idempotent(runs):
    run = runs("pass")
    assert await run.wait_exit() == 0
    run.proc.close()
    run.proc.close()


INTERMEDIATE = """
import asyncio, os, sys
from bgrscrpt_ioc.supervisor.process import ScriptProcess, setpriv_prefix

async def main():
    loop = asyncio.get_running_loop()
    script = ScriptProcess.spawn(
        [sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        cwd="/", env=dict(os.environ), loop=loop,
        on_output=lambda data: os.write(1, data), on_exit=lambda code: None,
    )
    print("script", script.pid, flush=True)
    print("setpriv", len(setpriv_prefix()), flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


async def read_until(proc: subprocess.Popen[bytes], words: list[bytes]) -> dict[bytes, int]:
    """Read ``proc``'s stdout until every word has been seen; the int after each word."""
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
        while not all(w in found() or w in buf for w in words):
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


@pytest.mark.parametrize("through", ["setpriv", "preexec_fn"])
async def test_pdeathsig_kills_script_when_ioc_is_killed(through):
    # An empty PATH hides setpriv: the IOC falls back to setting it in a preexec_fn.
    env = dict(os.environ) if through == "setpriv" else dict(os.environ, PATH="")
    ioc = subprocess.Popen([PY, "-c", INTERMEDIATE], stdout=subprocess.PIPE, env=env)
    script = 0
    try:
        seen = await read_until(ioc, [b"script", b"up", b"setpriv"])
        script = seen[b"script"]
        assert (seen[b"setpriv"] > 0) == (through == "setpriv")
        assert not gone(script)
        ioc.kill()  # SIGKILL: nothing of the IOC runs any more
        ioc.wait()
        await wait_gone(script)
    finally:
        ioc.kill()
        ioc.wait()
        assert ioc.stdout is not None
        ioc.stdout.close()
        if script and not gone(script):
            os.kill(script, signal.SIGKILL)


PARENT_CHECK = "import os; print('ran', os.environ.get('BGRSCRPT_IOC_PID'), flush=True)"


@pytest.mark.parametrize("parent_is_ioc", [True, False])
def test_sitecustomize_ends_a_script_whose_ioc_died_while_starting_it(parent_is_ioc):
    """Started by setpriv after the IOC died, a script has another parent: it ends
    before its first statement. With the right parent it runs, without the variable."""
    pid = os.getpid() if parent_is_ioc else os.getppid()
    env = dict(os.environ, PYTHONPATH=str(compat_site_dir()), BGRSCRPT_IOC_PID=str(pid))
    out = subprocess.run([PY, "-c", PARENT_CHECK], env=env, capture_output=True, timeout=TIMEOUT)
    if parent_is_ioc:
        assert (out.returncode, out.stdout) == (0, b"ran None\n"), out.stderr
    else:
        assert (out.returncode, out.stdout, out.stderr) == (1, b"", b"")


async def test_a_script_started_through_setpriv_passes_the_parent_check(runs):
    assert setpriv_prefix(), "setpriv (util-linux) is expected on this machine"
    run = runs(PARENT_CHECK, {"PYTHONPATH": str(compat_site_dir())})
    assert await run.wait_exit() == 0
    await run.expect(b"ran None\n")
