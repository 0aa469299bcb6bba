"""Supervision through Channel Access: every state of a slot, the watchdog, process
groups and settings that survive an IOC restart (leftovers of a dead IOC: test_containment).

The real IOC runs as a subprocess and is driven only through pyepics (libca), as
CS-Studio or caput would. A :class:`Monitor` subscribes to a PV and keeps every
update, so a state that lasts only a fraction of a second (STOPPING, BACKOFF) is
still seen, with the IOC's own timestamps. PV values are published one PV after
the other, so a test waits on every PV it asserts about rather than reading the
others once STATUS has changed.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import epics
import pytest

from tests.integration.conftest import write_script
from tests.integration.harness import Ioc, process_gone, wait_for

S01 = "BGRSCRPT_01"
STATES = ("STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL")
SEVERITIES = ("NO_ALARM", "MINOR", "MAJOR", "INVALID")


def settings(**supervisor: Any) -> str:
    """A settings file: fast supervision, with ``supervisor`` keys overriding."""
    values: dict[str, Any] = {
        "startsecs": 0.5,
        "stop_timeout": 2.0,
        "backoff_initial": 0.2,
        "backoff_max": 1.0,
        "start_limit_burst": 3,
        "start_limit_interval": 30.0,
    }
    values.update(supervisor)
    lines = ["[supervisor]"]
    for key, value in values.items():
        lines.append(f'{key} = "{value}"' if isinstance(value, str) else f"{key} = {value!r}")
    return "\n".join(lines) + "\n"


class Monitor:
    """Every update of one PV as a display would get it: (value, severity, IOC timestamp).

    ``text=True`` keeps a char waveform's value as a string.
    """

    def __init__(self, pvname: str, text: bool = False):
        self.pvname = pvname
        self.text = text
        self.updates: list[tuple[Any, int, float]] = []
        self._lock = threading.Lock()
        self.pv = epics.PV(pvname, form="time", auto_monitor=True, callback=self._update)
        if not self.pv.wait_for_connection(5.0):
            raise AssertionError(f"{pvname} did not connect")

    def _update(
        self,
        value: Any = None,
        char_value: str = "",
        severity: int = 0,
        timestamp: float = 0.0,
        **_: Any,
    ) -> None:
        with self._lock:
            self.updates.append((char_value if self.text else value, severity, timestamp))

    def mark(self) -> int:
        """Where the updates from now on start: pass it to ``since``."""
        with self._lock:
            return len(self.updates)

    def since(self, mark: int = 0) -> list[tuple[Any, int, float]]:
        with self._lock:
            return list(self.updates[mark:])

    def close(self) -> None:
        self.pv.clear_callbacks()
        self.pv.disconnect()


class StatusMonitor(Monitor):
    """STATUS of a slot, as names: ``states()`` gives the run of distinct states seen."""

    def states(self, mark: int = 0) -> list[str]:
        out: list[str] = []
        for value, _, _ in self.since(mark):
            name = STATES[int(value)]
            if not out or out[-1] != name:
                out.append(name)
        return out

    def first(self, state: str, mark: int = 0) -> tuple[int, float]:
        """(severity, IOC timestamp) of the first update to ``state`` after ``mark``."""
        for value, severity, stamp in self.since(mark):
            if STATES[int(value)] == state:
                return severity, stamp
        raise AssertionError(f"{self.pvname} never showed {state}: {self.states(mark)}")

    def wait(self, state: str, mark: int = 0, timeout: float = 15.0) -> None:
        wait_for(lambda: state in self.states(mark), timeout, f"{self.pvname} -> {state}")


@pytest.fixture
def monitors():
    """Monitors made by a test; all closed at its end."""
    made: list[Monitor] = []

    def make(pvname: str, cls: type[Monitor] = Monitor, **kw: Any) -> Any:
        monitor = cls(pvname, **kw)
        made.append(monitor)
        return monitor

    yield make
    for monitor in made:
        monitor.close()


def get(ioc: Ioc, suffix: str, **kw: Any) -> Any:
    """caget as the server has it now: pyepics' monitor cache may lag a put or a change."""
    kw.setdefault("use_monitor", False)
    return ioc.get(suffix, **kw)


def text(ioc: Ioc, suffix: str) -> str:
    return get(ioc, suffix, as_string=True) or ""


def wait_pv(ioc: Ioc, suffix: str, predicate, timeout: float = 10.0, **kw: Any) -> Any:
    """Wait until ``predicate(value)`` holds for the PV; return that value."""
    box: list[Any] = []

    def check() -> bool:
        value = get(ioc, suffix, **kw)
        box[:] = [value]
        return value is not None and bool(predicate(value))

    wait_for(check, timeout, f"{suffix} (last value: {box[0] if box else None!r})")
    return box[0]


def ioc_beats(ioc: Ioc, count: int) -> None:
    """Let the IOC's own 1 Hz HEARTBEAT advance ``count`` times: at least count-1 seconds.

    The way to give something that must NOT happen the time to happen anyway.
    """
    start = wait_pv(ioc, "BGRSCRPT:HEARTBEAT", lambda v: True)
    wait_pv(ioc, "BGRSCRPT:HEARTBEAT", lambda v: v >= start + count, timeout=count + 5.0)


def runs(var_dir: Path, slot: str = S01) -> list[dict[str, Any]]:
    """The slot's rows of the runs table, oldest first."""
    with contextlib.closing(sqlite3.connect(var_dir / "state.sqlite", timeout=5.0)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM runs WHERE slot = ? ORDER BY id", (slot,))
        return [dict(row) for row in rows]


def run_of(var_dir: Path, pid: int) -> dict[str, Any] | None:
    found = [run for run in runs(var_dir) if run["pid"] == pid]
    return found[-1] if found else None


def fresh_prefix() -> str:
    """Another IOC on the same var dir: persisted state is per var dir and slot, not prefix."""
    return f"T{uuid.uuid4().hex[:10].upper()}:"


def read_pid_file(path: Path) -> int:
    return wait_for(
        lambda: path.exists() and int(path.read_text() or 0), 10, f"a pid in {path.name}"
    )


# A script that takes 0.3 s to leave on SIGTERM, so STOPPING is visible.
SLOW_TO_STOP = """
import signal, sys, time
def leave(signum, frame):
    print("SIGTERM: leaving in 0.3 s", flush=True)
    time.sleep(0.3)
    sys.exit(0)
signal.signal(signal.SIGTERM, leave)
print("up", flush=True)
while True:
    time.sleep(0.05)
"""

FOREVER = """
import time
print("up", flush=True)
while True:
    time.sleep(0.05)
"""

# A grandchild in the script's own process group, each writing its pid to a file.
WITH_GRANDCHILD = """
import os, signal, subprocess, sys, time
IGNORE_TERM = {ignore}
if IGNORE_TERM:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the grandchild too
child = subprocess.Popen([sys.executable, "-c", "import time\\nwhile True: time.sleep(0.2)"])
def write(name, pid):
    with open(name + ".tmp", "w") as f:
        f.write(str(pid))
    os.replace(name + ".tmp", name)
write("grandchild.pid", child.pid)
write("script.pid", os.getpid())
print("grandchild", child.pid, flush=True)
while True:
    time.sleep(0.05)
"""


# ---- the life cycle --------------------------------------------------------


def test_starting_running_restart_stopping_stopped(make_ioc, config_dir, monitors):
    """STARTING for startsecs, RUNNING, UPTIME and HEARTBEAT counting, RESTART to a
    new PID with START_CNT+1, STOP through STOPPING to STOPPED, HEARTBEAT then still."""
    # No script at start-up: the monitor is there before the first START.
    ioc = make_ioc(settings(startsecs=1.0, stop_timeout=5.0), slots=1).start()
    status = monitors(ioc.pv(f"{S01}:STATUS"), StatusMonitor)
    wait_pv(ioc, f"{S01}:MSG", lambda v: v.startswith("no script at"), as_string=True)
    write_script(config_dir, "background_script.py", SLOW_TO_STOP)
    ioc.put(f"{S01}:START", 1)

    status.wait("RUNNING")
    _, starting_at = status.first("STARTING")
    _, running_at = status.first("RUNNING")
    assert status.states() == ["STOPPED", "STARTING", "RUNNING"]
    # RUNNING only once the run has lived startsecs (publication may add 50 ms each).
    assert 0.9 <= running_at - starting_at < 3.0, running_at - starting_at
    pid = wait_pv(ioc, f"{S01}:PID", lambda v: v > 0)
    wait_pv(ioc, f"{S01}:MSG", lambda v: v == f"running, pid {pid}", as_string=True)
    assert get(ioc, f"{S01}:START_CNT") == 1
    assert get(ioc, f"{S01}:STATUS.SEVR", as_string=True) == "NO_ALARM"

    # UPTIME counts the seconds of this run; HEARTBEAT counts while RUNNING.
    uptime = wait_pv(ioc, f"{S01}:UPTIME", lambda v: v >= 1)
    wait_pv(ioc, f"{S01}:UPTIME", lambda v: v >= uptime + 1, timeout=5)
    beat = get(ioc, f"{S01}:HEARTBEAT")
    wait_pv(ioc, f"{S01}:HEARTBEAT", lambda v: v >= beat + 1, timeout=5)

    # RESTART: stop (STOPPING while the script takes its 0.3 s), then start again.
    mark = status.mark()
    ioc.put(f"{S01}:RESTART", 1)
    status.wait("RUNNING", mark)
    assert status.states(mark) == ["STOPPING", "STARTING", "RUNNING"]
    new_pid = wait_pv(ioc, f"{S01}:PID", lambda v: v not in (0, pid))
    wait_pv(ioc, f"{S01}:START_CNT", lambda v: v == 2)
    assert process_gone(pid)
    assert get(ioc, f"{S01}:RESTART") == 0
    assert run_of(ioc.var_dir, pid)["cause"] == "stop"

    # STOP: STOPPING, then STOPPED once the script has left.
    mark = status.mark()
    ioc.put(f"{S01}:STOP", 1)
    status.wait("STOPPED", mark, timeout=5)
    assert status.states(mark) == ["STOPPING", "STOPPED"]
    wait_pv(ioc, f"{S01}:PID", lambda v: v == 0)
    wait_pv(ioc, f"{S01}:UPTIME", lambda v: v == 0)
    wait_pv(ioc, f"{S01}:MSG", lambda v: v == "stopped (exited with code 0)", as_string=True)
    assert get(ioc, f"{S01}:EXIT_CODE") == 0
    assert process_gone(new_pid)
    wait_for(lambda: run_of(ioc.var_dir, new_pid)["cause"] == "stop", 5, "run recorded")
    assert "SIGTERM: leaving" in text(ioc, f"{S01}:LOG")
    # The log file has a line from the IOC at every start and every exit, in order.
    script = config_dir / "background_script.py"
    logged = (ioc.var_dir / "logs" / f"{S01}.log").read_text()
    assert re.findall(rf"^--- \S+ {S01}: (.*) ---$", logged, re.MULTILINE) == [
        f"started {script} pid {pid}",
        "stopped (exited with code 0); starting again",
        f"started {script} pid {new_pid}",
        "stopped (exited with code 0)",
    ]

    # Not RUNNING: HEARTBEAT stands still while the IOC's own keeps beating.
    beat = get(ioc, f"{S01}:HEARTBEAT")
    ioc_beats(ioc, 2)
    assert get(ioc, f"{S01}:HEARTBEAT") == beat
    assert status.states(mark)[-1] == "STOPPED"
    assert get(ioc, f"{S01}:START_CNT") == 2


def test_exited_when_autorestart_off_and_on_failure_after_exit_0(make_ioc, config_dir, monitors):
    """AUTORESTART Off: a failing exit is EXITED. On failure: exit 0 is EXITED too."""
    ioc = make_ioc(settings(autorestart="Off"), slots=1).start()
    status = monitors(ioc.pv(f"{S01}:STATUS"), StatusMonitor)
    assert text(ioc, f"{S01}:AUTORESTART") == "Off"
    script = write_script(
        config_dir, "background_script.py", "import sys, time\ntime.sleep(1.0)\nsys.exit(3)\n"
    )
    ioc.put(f"{S01}:START", 1)

    status.wait("EXITED")
    assert status.states() == ["STOPPED", "STARTING", "RUNNING", "EXITED"]
    wait_pv(ioc, f"{S01}:EXIT_CODE", lambda v: v == 3)
    wait_pv(ioc, f"{S01}:MSG", lambda v: v == "exited with code 3", as_string=True)
    wait_pv(ioc, f"{S01}:PID", lambda v: v == 0)
    severity, _ = status.first("EXITED")
    assert SEVERITIES[severity] == "NO_ALARM"
    beat = get(ioc, f"{S01}:HEARTBEAT")
    ioc_beats(ioc, 2)  # well past backoff_initial: no restart came
    assert status.states()[-1] == "EXITED"
    assert get(ioc, f"{S01}:HEARTBEAT") == beat  # not RUNNING: stands still
    assert get(ioc, f"{S01}:START_CNT") == 1
    assert runs(ioc.var_dir)[-1]["cause"] == "exit-code"
    assert runs(ioc.var_dir)[-1]["exit_code"] == 3

    ioc.put(f"{S01}:AUTORESTART", "On failure")
    wait_pv(ioc, f"{S01}:AUTORESTART", lambda v: v == "On failure", as_string=True)
    script.write_text("import sys, time\ntime.sleep(1.0)\nsys.exit(0)\n")
    mark = status.mark()
    ioc.put(f"{S01}:START", "On")
    status.wait("EXITED", mark)
    assert status.states(mark) == ["STARTING", "RUNNING", "EXITED"]
    wait_pv(ioc, f"{S01}:EXIT_CODE", lambda v: v == 0)
    wait_pv(ioc, f"{S01}:MSG", lambda v: v == "exited with code 0", as_string=True)
    ioc_beats(ioc, 2)
    assert status.states(mark)[-1] == "EXITED"
    assert get(ioc, f"{S01}:START_CNT") == 2


def test_killed_by_signal_backs_off_with_minor_severity_then_runs_again(
    make_ioc, config_dir, monitors
):
    """A RUNNING script killed by SIGKILL: EXIT_CODE -9, BACKOFF (MINOR), RUNNING again."""
    write_script(config_dir, "background_script.py", FOREVER)
    ioc = make_ioc(settings(backoff_initial=1.0, backoff_max=2.0, start_limit_burst=5)).start()
    status = monitors(ioc.pv(f"{S01}:STATUS"), StatusMonitor)
    status.wait("RUNNING")
    pid = wait_pv(ioc, f"{S01}:PID", lambda v: v > 0)

    mark = status.mark()
    os.kill(pid, signal.SIGKILL)
    status.wait("BACKOFF", mark, timeout=5)
    # The whole second of back-off: long enough to read the alarm with caget.
    wait_pv(ioc, f"{S01}:STATUS.SEVR", lambda v: v == "MINOR", timeout=2, as_string=True)
    wait_pv(ioc, f"{S01}:EXIT_CODE", lambda v: v == -9, timeout=2)
    wait_pv(
        ioc,
        f"{S01}:MSG",
        lambda v: v == "killed by SIGKILL; restarting in 1 s",
        timeout=2,
        as_string=True,
    )
    status.wait("RUNNING", mark, timeout=10)
    assert status.states(mark) == ["BACKOFF", "STARTING", "RUNNING"]
    severities = {STATES[int(v)]: SEVERITIES[s] for v, s, _ in status.since(mark)}
    assert severities == {"BACKOFF": "MINOR", "STARTING": "NO_ALARM", "RUNNING": "NO_ALARM"}
    _, backoff_at = status.first("BACKOFF", mark)
    _, restart_at = status.first("STARTING", mark)
    assert 0.9 <= restart_at - backoff_at < 3.0, restart_at - backoff_at
    wait_pv(ioc, f"{S01}:PID", lambda v: v not in (0, pid))
    wait_pv(ioc, f"{S01}:START_CNT", lambda v: v == 2)
    wait_pv(ioc, f"{S01}:STATUS.SEVR", lambda v: v == "NO_ALARM", as_string=True)
    assert get(ioc, f"{S01}:EXIT_CODE") == -9  # the last exit, until the next one
    run = run_of(ioc.var_dir, pid)
    assert (run["cause"], run["exit_code"]) == ("signal", -9)


def test_fatal_after_the_start_limit_until_start(make_ioc, config_dir, monitors):
    """Failed starts back off; the 3rd within the interval is FATAL (MAJOR); START clears it."""
    # No script yet: the monitor is there before the first start (three failed starts
    # take under 2 s, less than a libca client may need to connect under load).
    ioc = make_ioc(settings(), slots=1).start()
    status = monitors(ioc.pv(f"{S01}:STATUS"), StatusMonitor)
    status.wait("STOPPED")
    # Dies before startsecs (0.5 s), each time: failed starts.
    script = write_script(
        config_dir, "background_script.py", "import sys, time\ntime.sleep(0.2)\nsys.exit(2)\n"
    )
    ioc.put(f"{S01}:START", 1)

    status.wait("FATAL", timeout=15)
    # Each state is seen unless it lasted less than a publication (50 ms, more under
    # load); the runs table below has the exact history.
    states = status.states()
    assert states[-1] == "FATAL" and "BACKOFF" in states, states
    assert set(states) <= {"STOPPED", "STARTING", "BACKOFF", "FATAL"}, states
    severity, _ = status.first("FATAL")
    assert SEVERITIES[severity] == "MAJOR"
    wait_pv(ioc, f"{S01}:STATUS.SEVR", lambda v: v == "MAJOR", as_string=True)
    wait_pv(ioc, f"{S01}:START_CNT", lambda v: v == 3)
    wait_pv(ioc, f"{S01}:EXIT_CODE", lambda v: v == 2)
    msg = wait_pv(ioc, f"{S01}:MSG", lambda v: v.startswith("FATAL"), as_string=True)
    assert msg.startswith("FATAL: 3 starts within 30 s; last: failed to start: exited with code 2")
    assert [run["cause"] for run in runs(ioc.var_dir)] == ["exit-code", "exit-code", "start-limit"]

    ioc_beats(ioc, 2)  # FATAL stays FATAL: no more starts
    assert status.states()[-1] == "FATAL"
    assert get(ioc, f"{S01}:HEARTBEAT") == 0  # never RUNNING: never counted
    assert get(ioc, f"{S01}:START_CNT") == 3

    script.write_text(FOREVER)
    mark = status.mark()
    ioc.put(f"{S01}:START", 1)
    status.wait("RUNNING", mark)
    assert status.states(mark) == ["STARTING", "RUNNING"]
    wait_pv(ioc, f"{S01}:STATUS.SEVR", lambda v: v == "NO_ALARM", as_string=True)
    wait_pv(ioc, f"{S01}:START_CNT", lambda v: v == 4)


def test_stop_during_backoff_is_stopped_at_once(make_ioc, config_dir, monitors):
    """STOP in BACKOFF: STOPPED straight away, and the pending restart never comes."""
    write_script(config_dir, "background_script.py", "import sys\nsys.exit(1)\n")
    ioc = make_ioc(settings(backoff_initial=1.5, backoff_max=2.0, start_limit_burst=5), slots=1)
    ioc.start()
    status = monitors(ioc.pv(f"{S01}:STATUS"), StatusMonitor)
    status.wait("BACKOFF")
    mark = status.mark()
    put_at = time.time()
    ioc.put(f"{S01}:STOP", 1)
    status.wait("STOPPED", mark, timeout=2)
    assert status.states(mark) == ["STOPPED"]
    _, stopped_at = status.first("STOPPED", mark)
    assert stopped_at - put_at < 0.75  # not after the 1.5 s back-off
    wait_pv(ioc, f"{S01}:MSG", lambda v: "pending restart cancelled" in v, as_string=True)
    ioc_beats(ioc, 3)  # two seconds and more: the cancelled restart would have come
    assert status.states(mark) == ["STOPPED"]
    assert get(ioc, f"{S01}:START_CNT") == 1


# ---- the watchdog ----------------------------------------------------------

BEATING = """
import os, signal, time
from bgrscrpt_ioc import script
def leave(signum, frame):  # slowly, so STOPPING is seen; then as SIGTERM would
    time.sleep(0.3)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)
signal.signal(signal.SIGTERM, leave)
script.register()
n = 0
while os.path.exists("keep_beating"):
    script.beat()
    if n % 5 == 0:
        script.status(f"beat {n}")
    n += 1
    time.sleep(0.1)
script.status("stopped beating")
print("stopped beating", flush=True)
while True:
    time.sleep(0.05)
"""


def test_watchdog_kills_a_silent_script_and_restarts_it(make_ioc, config_dir, monitors):
    """WATCHDOG 1: beats keep the script RUNNING; silence gets it killed and restarted,
    MSG says watchdog and the state database records cause "watchdog"."""
    write_script(config_dir, "background_script.py", BEATING)
    keep_beating = config_dir / "keep_beating"
    keep_beating.touch()
    ioc = make_ioc(settings(backoff_initial=0.5), slots=1).start()
    status = monitors(ioc.pv(f"{S01}:STATUS"), StatusMonitor)
    msg = monitors(ioc.pv(f"{S01}:MSG"), text=True)
    status.wait("RUNNING")
    pid = wait_pv(ioc, f"{S01}:PID", lambda v: v > 0)
    wait_pv(ioc, f"{S01}:REGISTERED", lambda v: v == "Yes", as_string=True)
    # script.status(text) reaches MSG.
    wait_pv(ioc, f"{S01}:MSG", lambda v: v.startswith("beat "), as_string=True)

    ioc.put(f"{S01}:WATCHDOG", 1)
    assert get(ioc, f"{S01}:WATCHDOG") == 1.0
    # Beating: still the same run, HEARTBEAT counting, two seconds after the put and more.
    beat = get(ioc, f"{S01}:HEARTBEAT")
    wait_pv(ioc, f"{S01}:HEARTBEAT", lambda v: v >= beat + 3, timeout=6)
    assert get(ioc, f"{S01}:PID") == pid
    assert status.states()[-1] == "RUNNING"

    mark, msg_mark = status.mark(), msg.mark()
    keep_beating.unlink()

    def says_watchdog() -> bool:
        return any("watchdog" in m[0] for m in msg.since(msg_mark))

    wait_for(says_watchdog, 5, "MSG to say watchdog")
    keep_beating.touch()  # before the restart: the new run beats again
    status.wait("RUNNING", mark, timeout=10)
    assert status.states(mark) == ["STOPPING", "BACKOFF", "STARTING", "RUNNING"]
    messages = [m[0] for m in msg.since(msg_mark)]
    assert "stopped beating" in messages
    assert any(m.startswith("watchdog: no beat for 1.") for m in messages), messages
    assert "watchdog: killed by SIGTERM; restarting in 0.5 s" in messages, messages
    new_pid = wait_pv(ioc, f"{S01}:PID", lambda v: v not in (0, pid))
    wait_pv(ioc, f"{S01}:START_CNT", lambda v: v == 2)
    assert process_gone(pid)
    run = run_of(ioc.var_dir, pid)
    assert (run["cause"], run["exit_code"]) == ("watchdog", -15)
    assert run_of(ioc.var_dir, new_pid)["ended"] is None
    # The new run beats: it outlives the watchdog period.
    beat = wait_pv(ioc, f"{S01}:HEARTBEAT", lambda v: True)
    wait_pv(ioc, f"{S01}:HEARTBEAT", lambda v: v >= beat + 2, timeout=6)
    assert get(ioc, f"{S01}:PID") == new_pid


# ---- process groups --------------------------------------------------------


def test_stop_kills_a_group_that_ignores_sigterm_after_the_stop_timeout(
    make_ioc, config_dir, monitors
):
    """A script and its grandchild ignore SIGTERM: SIGKILL after stop_timeout (2 s)."""
    write_script(config_dir, "background_script.py", WITH_GRANDCHILD.format(ignore=True))
    ioc = make_ioc(settings(stop_timeout=2.0), slots=1).start()
    status = monitors(ioc.pv(f"{S01}:STATUS"), StatusMonitor)
    status.wait("RUNNING")
    pid = read_pid_file(config_dir / "script.pid")
    grandchild = read_pid_file(config_dir / "grandchild.pid")
    assert get(ioc, f"{S01}:PID") == pid
    assert os.getpgid(grandchild) == pid  # in the script's group

    mark = status.mark()
    ioc.put(f"{S01}:STOP", 1)
    status.wait("STOPPING", mark, timeout=2)
    # SIGTERM has been sent and ignored.
    assert not process_gone(pid) and not process_gone(grandchild)
    status.wait("STOPPED", mark, timeout=6)
    _, stopping_at = status.first("STOPPING", mark)
    _, stopped_at = status.first("STOPPED", mark)
    assert 1.9 <= stopped_at - stopping_at < 4.0, stopped_at - stopping_at
    wait_for(lambda: process_gone(pid) and process_gone(grandchild), 3, "the whole group gone")
    wait_pv(ioc, f"{S01}:EXIT_CODE", lambda v: v == -9)
    wait_pv(ioc, f"{S01}:MSG", lambda v: v == "stopped (killed by SIGKILL)", as_string=True)
    run = run_of(ioc.var_dir, pid)
    assert (run["cause"], run["exit_code"]) == ("stop", -9)


# ---- settings written over Channel Access ----------------------------------


def test_a_burst_of_setting_puts_reaches_the_state_database_while_the_ioc_runs(make_ioc):
    """Back-to-back puts are saved together, shortly after (SETTINGS_SAVE_DELAY), the
    last value winning, with the IOC still running (a SIGKILL after that loses nothing)."""
    ioc = make_ioc(settings(autorestart="Off", watchdog=0.0)).start()
    for seconds in (1.0, 2.0, 3.0, 4.5):
        ioc.put(f"{S01}:WATCHDOG", seconds)
    ioc.put(f"{S01}:AUTORESTART", "On failure")

    def saved() -> dict[str, str]:
        db = sqlite3.connect(f"file:{ioc.var_dir / 'state.sqlite'}?mode=ro", uri=True)
        try:
            rows = db.execute("SELECT key, value FROM settings WHERE slot = ?", (S01,))
            return {str(k): str(v) for k, v in rows}
        finally:
            db.close()

    wait_for(lambda: saved() == {"WATCHDOG": "4.5", "AUTORESTART": "1"}, 5, "the settings saved")
    ioc.kill()
    second = make_ioc(settings(autorestart="Off", watchdog=0.0), prefix=fresh_prefix()).start()
    wait_pv(second, f"{S01}:WATCHDOG", lambda v: v == 4.5)
    wait_pv(second, f"{S01}:AUTORESTART", lambda v: v == "On failure", as_string=True)


def test_autorestart_and_watchdog_written_over_ca_survive_an_ioc_restart(make_ioc):
    """What an operator put over CA wins over the settings file at the next start."""
    toml = settings(autorestart="Off", watchdog=0.0)
    first = make_ioc(toml).start()
    assert text(first, f"{S01}:AUTORESTART") == "Off"
    assert get(first, f"{S01}:WATCHDOG") == 0.0
    first.put(f"{S01}:AUTORESTART", "Always")
    first.put(f"{S01}:WATCHDOG", 2.5)
    wait_pv(first, f"{S01}:AUTORESTART", lambda v: v == "Always", as_string=True)
    wait_pv(first, f"{S01}:WATCHDOG", lambda v: v == 2.5)
    assert first.stop() == 0

    second = make_ioc(toml, prefix=fresh_prefix()).start()
    wait_pv(second, f"{S01}:AUTORESTART", lambda v: v == "Always", as_string=True)
    wait_pv(second, f"{S01}:WATCHDOG", lambda v: v == 2.5)
    # The other slot keeps what the settings file says.
    assert text(second, "BGRSCRPT_02:AUTORESTART") == "Off"
    assert get(second, "BGRSCRPT_02:WATCHDOG") == 0.0
