"""Nothing a script starts escapes the IOC: helpers in other sessions, daemons.

Each test runs twice: with a cgroup per slot (the IOC started inside a cgroup
of the test's own, so it nests its cgroups below it and the test can check
they are removed), and with the keeper as child subreaper plus the marker
(``BGRSCRPT_CONTAINMENT=subreaper``). The script starts a helper with
``subprocess.Popen(..., start_new_session=True)`` and a daemon by double fork +
``setsid`` that ignores SIGTERM; the ``test_tag`` fixture fails a test that
leaves any of them running.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import psutil

from tests.integration.conftest import write_script
from tests.integration.harness import Ioc, caget_text, keeper_of, process_gone, wait_for
from tests.integration.mechanisms import start as start_under

S01 = "BGRSCRPT_01"

SETTINGS = """
[supervisor]
startsecs = 0.5
stop_timeout = 2.0
backoff_initial = 0.2
backoff_max = 1.0
start_limit_burst = 5
start_limit_interval = 30.0
"""

# Each run appends "<leader> <helper> <daemon>" to runs.txt once all three are up.
ESCAPER = """
import os, signal, subprocess, sys, time
helper = subprocess.Popen(
    [sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True
)
r, w = os.pipe()
if os.fork() == 0:  # a daemon: double fork, setsid, SIGTERM ignored
    os.setsid()
    if os.fork() == 0:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.write(w, str(os.getpid()).encode())
        os.close(w)
        time.sleep(600)
        os._exit(0)
    os._exit(0)
os.close(w)
daemon = int(os.read(r, 32))
os.wait()
with open("runs.txt", "a") as f:
    f.write(f"{os.getpid()} {helper.pid} {daemon}\\n")
while True:
    time.sleep(0.2)
"""


def start(make_ioc, mechanism, settings: str = SETTINGS, **kw: Any) -> Ioc:
    return start_under(make_ioc, mechanism, settings, **kw)


def runs(config_dir: Path, count: int) -> list[tuple[int, int, int]]:
    """The first ``count`` runs' (leader, helper, daemon), waiting for them."""

    def read() -> list[tuple[int, int, int]] | None:
        try:
            lines = (config_dir / "runs.txt").read_text().splitlines()
        except FileNotFoundError:
            return None
        found = [tuple(int(v) for v in line.split()) for line in lines if line]
        return found if len(found) >= count else None  # type: ignore[return-value]

    return wait_for(read, 15, f"{count} run(s) of the script")[:count]


def all_gone(pids: tuple[int, ...], what: str) -> None:
    wait_for(lambda: all(process_gone(pid) for pid in pids), 5, what)


def in_other_sessions(run: tuple[int, int, int]) -> None:
    leader, helper, daemon = run
    sessions = {os.getsid(pid) for pid in run}
    assert len(sessions) == 3, "the helper and the daemon should have escaped the session"
    assert {os.getpgid(helper), os.getpgid(daemon)}.isdisjoint({leader})


def test_escaped_helpers_end_on_stop_and_on_restart(mechanism, make_ioc, config_dir):
    write_script(config_dir, "background_script.py", ESCAPER)
    ioc = start(make_ioc, mechanism)
    first = runs(config_dir, 1)[0]
    in_other_sessions(first)
    if mechanism.cgroup is not None:
        slot_cgroup = next(p for p in mechanism.ioc_cgroups() if p.name == S01)
        procs = {int(p) for p in (slot_cgroup / "cgroup.procs").read_text().split()}
        assert set(first) <= procs

    ioc.put(f"{S01}:STOP", 1)
    ioc.wait_status("STOPPED")
    all_gone(first, "the script, its helper and its daemon gone on STOP")

    ioc.put(f"{S01}:START", 1)
    second = runs(config_dir, 2)[1]
    ioc.put(f"{S01}:RESTART", 1)
    third = runs(config_dir, 3)[2]
    all_gone(second, "the first run's helper and daemon gone on RESTART")
    assert not any(process_gone(pid) for pid in third)
    assert ioc.stop() == 0
    all_gone(third, "everything gone when the IOC stops")


def test_escaped_helpers_end_when_the_watchdog_kills_the_script(mechanism, make_ioc, config_dir):
    write_script(config_dir, "background_script.py", ESCAPER)  # never beats
    ioc = start(make_ioc, mechanism, SETTINGS + 'watchdog = 1.0\nautorestart = "Off"\n')
    run = runs(config_dir, 1)[0]
    ioc.wait_status("EXITED", timeout=10)
    assert caget_text(ioc, f"{S01}:MSG").startswith("watchdog: killed by SIGTERM")
    all_gone(run, "the script, its helper and its daemon gone after the watchdog")


def test_escaped_helpers_end_when_the_ioc_is_killed(mechanism, make_ioc, config_dir):
    write_script(config_dir, "background_script.py", ESCAPER)
    ioc = start(make_ioc, mechanism)
    run = runs(config_dir, 1)[0]
    keeper = keeper_of(ioc).pid
    ioc.kill()  # SIGKILL: nothing of the IOC runs any more
    all_gone(run, "the script, its helper and its daemon gone with the IOC")
    wait_for(lambda: process_gone(keeper), 5, "the keeper to end")
    assert mechanism.ioc_cgroups() == [], "the keeper removes the IOC's cgroups"


def test_leftovers_of_a_dead_ioc_and_keeper_are_killed_at_the_next_start(
    mechanism, make_ioc, config_dir
):
    """The IOC frozen, its keeper killed, then the IOC: the script dies (PDEATHSIG), its
    helper and daemon live on (under PID 1 without cgroups). The next IOC on the same var
    dir finds them by cgroup and marker and kills them, and them only."""
    script = write_script(config_dir, "background_script.py", ESCAPER)
    first = start(make_ioc, mechanism)
    leader, helper, daemon = runs(config_dir, 1)[0]
    stranger = psutil.Popen(  # another IOC's script of the same slot name: not ours
        ["sleep", "600"],
        env={**os.environ, "BGRSCRPT_MARK": f"0123456789ab/{S01}", "BGRSCRPT_IOC_NAME": S01},
        start_new_session=True,
    )
    try:
        assert first.proc is not None
        keeper = keeper_of(first)
        os.kill(first.proc.pid, signal.SIGSTOP)  # it must not see its keeper go
        keeper.kill()
        wait_for(lambda: process_gone(keeper.pid), 5, "the keeper to die")
        first.kill()
        wait_for(lambda: process_gone(leader), 5, "the script to die by PDEATHSIG")
        assert not process_gone(helper) and not process_gone(daemon)
        if mechanism.cgroup is None:
            assert psutil.Process(daemon).ppid() == 1  # escaped to init

        script.unlink()  # the next IOC starts nothing of its own
        second = start(make_ioc, mechanism, prefix=f"T{uuid.uuid4().hex[:10].upper()}:")
        all_gone((helper, daemon), "the leftovers killed at the next start")
        assert "left by a previous IOC" in second.output()
        assert stranger.is_running() and stranger.status() != psutil.STATUS_ZOMBIE
        db = sqlite3.connect(f"file:{second.var_dir / 'state.sqlite'}?mode=ro", uri=True)
        try:
            row = db.execute("SELECT cause, exit_code FROM runs WHERE pid = ?", (leader,))
            assert row.fetchone() == ("ioc-exit", -9)
        finally:
            db.close()
        second.wait_status("STOPPED")
    finally:
        stranger.kill()
        stranger.wait()


def test_a_killed_keeper_ends_the_runs_and_a_new_one_takes_over(mechanism, make_ioc, config_dir):
    """The keeper SIGKILLed while the IOC runs: the IOC kills what the script left, records
    the run as killed, starts a new keeper, and the restart policy starts the script again."""
    write_script(config_dir, "background_script.py", ESCAPER)
    ioc = start(make_ioc, mechanism)
    first = runs(config_dir, 1)[0]
    keeper = keeper_of(ioc)
    keeper.kill()
    all_gone(first, "the first run's processes gone with the keeper")
    second = runs(config_dir, 2)[1]
    ioc.wait_status("RUNNING")
    assert keeper_of(ioc).pid != keeper.pid
    assert ioc.get(f"{S01}:EXIT_CODE") == -9
    assert "keeper" in ioc.output() and "starting a new one" in ioc.output()
    assert ioc.stop() == 0
    all_gone(second, "everything gone when the IOC stops")
