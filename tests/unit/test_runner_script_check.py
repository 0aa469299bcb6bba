"""The slot runner while a script is being checked (off the loop): a real SlotRunner, real
processes and a real state database; only the check is held open by the test.

STARTING shows at once; STOP during the check starts nothing; RESTART during it starts
the script once the check is done; a failed check is a spawn failure; a shutdown during
the check does not wait for it.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import pytest

from bgrscrpt_ioc.core.slot import Policy, SlotState
from bgrscrpt_ioc.settings import SlotSettings
from bgrscrpt_ioc.state_db import StateDB
from bgrscrpt_ioc.supervisor.guardian import Guardian, KeeperConfig
from bgrscrpt_ioc.supervisor.launcher import ScriptLauncher
from bgrscrpt_ioc.supervisor.runner import SlotRunner

SCRIPT = "import time\nprint('up', flush=True)\nwhile True:\n    time.sleep(0.1)\n"


class HeldCheck:
    """Stands in for check_script: each call waits until the test answers it."""

    def __init__(self) -> None:
        self.calls: list[asyncio.Future[str]] = []

    async def __call__(self, path: Path) -> str:
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.calls.append(answer)
        return await answer

    async def answer(self, problem: str = "") -> None:
        await until(lambda: any(not f.done() for f in self.calls))
        pending = [f for f in self.calls if not f.done()]
        assert len(pending) == 1, pending
        pending[0].set_result(problem)


async def until(condition, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
async def slot(tmp_path, test_tag):
    check = HeldCheck()
    script = tmp_path / "s.py"
    script.write_text(SCRIPT)
    db = StateDB(tmp_path / "state.sqlite")
    guardian = Guardian(KeeperConfig(instance=uuid.uuid4().hex[:12]))
    guardian.start()
    guardian.attach(asyncio.get_running_loop())
    settings = SlotSettings("BGRSCRPT_01", script, Policy(startsecs=0.2, stop_timeout=2.0))
    launcher = ScriptLauncher(
        settings, config_dir=tmp_path, var_dir=tmp_path, prefix="T:", guardian=guardian, check=check
    )
    runner = SlotRunner(settings, launcher=launcher, db=db, on_change=lambda: None)
    runner.open(asyncio.get_running_loop())
    runner.check = check
    try:
        yield runner
    finally:
        await asyncio.wait_for(runner.shutdown(), 10)
        guardian.close()
        await db.aclose()


async def test_starting_shows_at_once_and_the_script_starts_after_the_check(slot):
    slot.start()
    assert slot.core.state is SlotState.STARTING and slot.process is None
    await slot.check.answer("")
    await until(lambda: slot.core.state is SlotState.RUNNING)
    assert slot.process is not None and slot.core.start_count == 1


async def test_stop_during_the_check_starts_nothing(slot):
    slot.start()
    slot.stop()
    assert slot.core.state is SlotState.STOPPED  # the check was given up at once
    assert slot.core.message == "stopped before it started"
    assert slot.process is None and slot.core.start_count == 0
    assert slot._exited.is_set()


async def test_restart_during_the_check_starts_the_script_once(slot):
    slot.start()
    slot.restart()
    assert slot.core.state is SlotState.STOPPING
    await slot.check.answer("")  # the first check passes; the restart checks again
    await until(lambda: len(slot.check.calls) == 2)
    assert slot.process is None
    await slot.check.answer("")
    await until(lambda: slot.core.state is SlotState.RUNNING)
    assert slot.core.start_count == 1


async def test_a_failed_check_is_a_spawn_failure(slot):
    slot.start()
    await slot.check.answer("syntax error in s.py line 3: invalid syntax")
    await until(lambda: slot.core.state is SlotState.STOPPED)
    assert slot.core.message == "syntax error in s.py line 3: invalid syntax"
    assert slot.core.start_count == 0 and slot._exited.is_set()


async def test_shutdown_during_the_check_does_not_wait_for_it(slot):
    slot.start()
    loop = asyncio.get_running_loop()
    began = loop.time()
    await asyncio.wait_for(slot.shutdown(), 5)
    assert loop.time() - began < 1.0
    assert slot.core.state is SlotState.STOPPED and slot.process is None


async def test_the_real_check_compiles_in_another_process(tmp_path, monkeypatch):
    """check_script itself: one subprocess per changed file, cached when unchanged."""
    from bgrscrpt_ioc.supervisor import script_check

    started: list[tuple] = []
    real = asyncio.create_subprocess_exec

    async def spy(*args, **kw):
        started.append(args)
        return await real(*args, **kw)

    monkeypatch.setattr(script_check.asyncio, "create_subprocess_exec", spy)
    script = tmp_path / "ok.py"
    script.write_text("x = 1\n")
    assert await script_check.check_script(script) == ""
    assert await script_check.check_script(script) == ""  # unchanged: not compiled again
    assert len(started) == 1 and sys.executable in started[0]
    script.write_text("x = (\n")
    assert (await script_check.check_script(script)).startswith(f"syntax error in {script} line")
    assert await script_check.check_script(tmp_path / "none.py") == (
        f"no script at {tmp_path / 'none.py'}"
    )
    script.write_bytes(b"x = 1\0\n")
    problem = await script_check.check_script(script)
    assert problem.startswith(f"cannot compile {script}: ") and "null bytes" in problem, problem
