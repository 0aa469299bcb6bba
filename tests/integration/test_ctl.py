"""The operator CLI ``bgrscrpt`` against a real IOC, as an operator runs it.

Every subcommand is run as its own process, over Channel Access only (caproto's
client), and checked both by its exit status and output and by what the IOC
then shows through libca.
"""

from __future__ import annotations

import os
import pty
import queue
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from epics import dbr

from devsupport.ports import free_ca_port as _free_port
from tests.integration.conftest import write_script
from tests.integration.harness import Ioc, wait_for

COUNTING_SCRIPT = """
import itertools, time
for n in itertools.count():
    print(f"line {n}", flush=True)
    time.sleep(0.1)
"""

CRASHING_SCRIPT = """
print("about to fail", flush=True)
1 / 0
"""


def run_ctl(*args: str, env: dict[str, str] | None = None, timeout: float = 60.0):
    environ = dict(os.environ)
    environ.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "bgrscrpt_ioc.ctl", *args],
        env=environ,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def failed_with(result: subprocess.CompletedProcess, status: int = 1) -> str:
    """The one line a failed command prints on stderr."""
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def two_slots(make_ioc, config_dir: Path) -> Ioc:
    write_script(config_dir, "background_script.py", COUNTING_SCRIPT)
    write_script(config_dir, "background_script2.py", COUNTING_SCRIPT)
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING", "BGRSCRPT_01")
    ioc.wait_status("RUNNING", "BGRSCRPT_02")
    return ioc


def test_status_stop_start_restart(two_slots: Ioc):
    ioc = two_slots
    p = ("--prefix", ioc.prefix)
    result = run_ctl(*p, "status")
    assert result.returncode == 0, result.stderr
    # The IOC's own line: how late its loop runs, in no alarm (exit 0).
    assert re.search(r", loop lag \d+\.\d ms$", result.stdout.splitlines()[0]), result.stdout
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()[2:]}
    assert rows["BGRSCRPT_01"][1] == "RUNNING"
    assert rows["BGRSCRPT_01"][2] == str(ioc.get("BGRSCRPT_01:PID"))
    assert rows["BGRSCRPT_02"][1] == "RUNNING"
    # CPU, MEMORY and PROCS of each running script, once measured (every 2 s).
    assert result.stdout.splitlines()[1].split()[5:8] == ["CPU", "MEMORY", "PROCS"]
    wait_for(lambda: ioc.get("BGRSCRPT_01:NPROC") == 1, 5, "the first measurement")
    result = run_ctl(*p, "status", "01")
    cpu, memory, procs = result.stdout.splitlines()[2].split()[5:8]
    assert re.fullmatch(r"\d+\.\d%", cpu) and re.fullmatch(r"\d+\.\dMB", memory), (cpu, memory)
    assert float(memory[:-2]) > 1 and procs == "1"
    assert "\033[" not in result.stdout  # piped: plain text

    result = run_ctl(*p, "stop", "01")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("BGRSCRPT_01: STOPPED")
    assert ioc.status("BGRSCRPT_01") == "STOPPED"
    assert "already" not in failed_with(run_ctl(*p, "stop", "1"))  # not running: no effect
    assert "not running" in failed_with(run_ctl(*p, "stop", "BGRSCRPT_01"))

    result = run_ctl(*p, "start", "BGRSCRPT_01")
    assert result.returncode == 0, result.stderr
    pid = ioc.get("BGRSCRPT_01:PID")
    assert ioc.status("BGRSCRPT_01") == "RUNNING"
    assert result.stdout.strip() == f"BGRSCRPT_01: started, pid {pid}"
    assert f"already running (pid {pid})" in failed_with(run_ctl(*p, "start", "01"))

    old = ioc.get("BGRSCRPT_02:PID")
    starts = ioc.get("BGRSCRPT_02:START_CNT")
    result = run_ctl(*p, "restart", "2")
    assert result.returncode == 0, result.stderr
    new = ioc.get("BGRSCRPT_02:PID")
    assert new != old and new > 0
    assert ioc.get("BGRSCRPT_02:START_CNT") == starts + 1
    assert result.stdout.strip() == f"BGRSCRPT_02: restarted, pid {new}"


def read_lines(stream) -> queue.Queue:
    """Lines of ``stream`` onto a queue (None at its end), so reads can have a deadline."""
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def next_line(lines: queue.Queue, deadline: float) -> str | None:
    try:
        return lines.get(timeout=max(0.0, deadline - time.monotonic()))
    except queue.Empty:
        return None


def test_log_and_follow(two_slots: Ioc):
    ioc = two_slots
    wait_for(lambda: "line 5" in (ioc.get("BGRSCRPT_01:LOG", as_string=True) or ""), 10, "output")
    result = run_ctl("--prefix", ioc.prefix, "log", "01")
    assert result.returncode == 0, result.stderr
    assert "line 5" in result.stdout.splitlines()

    follower = subprocess.Popen(
        [sys.executable, "-m", "bgrscrpt_ioc.ctl", "--prefix", ioc.prefix, "log", "01", "-f"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert follower.stdout is not None and follower.stderr is not None  # both piped
    lines = read_lines(follower.stdout)
    try:
        numbers: list[int] = []
        deadline = time.monotonic() + 30
        # The window of LOG moves on every update; followed, it must read as one
        # unbroken stream: each number once, in order.
        while len(numbers) < 60 and time.monotonic() < deadline:
            line = next_line(lines, deadline)
            if line is None:
                break
            if line.startswith("line "):
                numbers.append(int(line.split()[1]))
        assert len(numbers) >= 60, numbers
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(15) == 0, follower.stderr.read()
        follower.stdout.close()
        follower.stderr.close()


def test_start_that_does_not_take_effect(make_ioc, config_dir: Path):
    write_script(config_dir, "background_script.py", CRASHING_SCRIPT)
    ioc = make_ioc().start()
    ioc.wait_status("FATAL", timeout=30)  # three failed starts

    line = failed_with(run_ctl("--prefix", ioc.prefix, "start", "01"))
    assert line.startswith("bgrscrpt: BGRSCRPT_01: "), line
    assert "ZeroDivisionError" in line or "BACKOFF" in line, line

    # Slot 02 has no script: the IOC refuses the START and MSG says why.
    line = failed_with(run_ctl("--prefix", ioc.prefix, "start", "02"))
    assert "no script at" in line, line
    assert ioc.status("BGRSCRPT_02") == "STOPPED"

    # status shows a slot down on its own with exit status 3
    starts = ioc.get("BGRSCRPT_01:START_CNT")
    ioc.put("BGRSCRPT_01:START", 1)
    # Three more failed starts (not the FATAL shown before the START was published).
    wait_for(lambda: ioc.get("BGRSCRPT_01:START_CNT") >= starts + 3, 30, "three more starts")
    ioc.wait_status("FATAL", timeout=30)  # BACKOFF would not hold still long enough
    result = run_ctl("--prefix", ioc.prefix, "status")
    assert result.returncode == 3, (result.stdout, result.stderr)


def test_no_such_slot_and_bad_arguments(two_slots: Ioc):
    p = ("--prefix", two_slots.prefix)
    line = failed_with(run_ctl(*p, "start", "07"))
    assert (
        line == "bgrscrpt: BGRSCRPT_07: no such slot on this IOC (slots: BGRSCRPT_01, BGRSCRPT_02)"
    )
    assert "no such slot" in failed_with(run_ctl(*p, "log", "9"))
    assert "no such slot" in failed_with(run_ctl(*p, "status", "03"))
    assert "not a slot" in failed_with(run_ctl(*p, "restart", "abc"), status=2)
    assert "not a slot" in failed_with(run_ctl(*p, "stop", "00"), status=2)
    failed_with(run_ctl(*p, "frobnicate"), status=2)
    # No [[watch]]: NAMES is empty, so every watch name is unknown, and says so.
    assert two_slots.get("BGRSCRPT:WATCH:NAMES", as_string=True) == ""
    for action in ("restart", "enable"):
        line = failed_with(run_ctl(*p, "watch", action, "NOPE"))
        assert line == "bgrscrpt: watch NOPE: no such watch on this IOC (it has no watches)"
    assert two_slots.status("BGRSCRPT_01") == "RUNNING"


def test_ioc_that_is_down(two_slots: Ioc):
    ioc = two_slots
    ioc.stop()
    for args in (("status",), ("start", "01"), ("log", "01")):
        line = failed_with(run_ctl("--prefix", ioc.prefix, *args))
        assert line.startswith(f"bgrscrpt: no IOC answers for prefix '{ioc.prefix}'"), line


def test_remote_addressing_and_prefix_from_environment(two_slots: Ioc):
    ioc = two_slots
    # Only this IOC's address, as for an IOC on another machine: found through
    # EPICS_CA_ADDR_LIST alone, its prefix from MYPVPREFIX.
    env = {
        "EPICS_CA_ADDR_LIST": f"127.0.0.1:{ioc.port}",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "MYPVPREFIX": ioc.prefix,
    }
    result = run_ctl("status", "01", env=env)
    assert result.returncode == 0, result.stderr
    assert "BGRSCRPT_01" in result.stdout and "BGRSCRPT_02" not in result.stdout
    assert run_ctl("restart", "01", env=env).returncode == 0

    # The right prefix at an address where no IOC listens: not found.
    env["EPICS_CA_ADDR_LIST"] = f"127.0.0.1:{_free_port()}"
    assert "no IOC answers" in failed_with(run_ctl("status", env=env))


def test_colour_on_a_terminal_only(two_slots: Ioc):
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bgrscrpt_ioc.ctl", "--prefix", two_slots.prefix, "status"],
            stdout=slave,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "TERM": "xterm"},
        )
        assert proc.stderr is not None  # piped
        os.close(slave)
        slave = -1
        output = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the pty closes when the process exits
                break
            if not chunk:
                break
            output += chunk
        assert proc.wait(30) == 0, proc.stderr.read()
        proc.stderr.close()
    finally:
        os.close(master)
        if slave >= 0:
            os.close(slave)
    assert b"\033[32mRUNNING" in output, output
    plain = run_ctl("--prefix", two_slots.prefix, "--color", "never", "status")
    assert "\033[" not in plain.stdout and "RUNNING" in plain.stdout


# ---- watches -------------------------------------------------------------------

# A watch that needs no other IOC: it watches the IOC's own UPTIME, which never
# alarms, so it stays OK.
SELF_WATCH = """
[[watch]]
name = "{name}"
pvs = ["{prefix}BGRSCRPT:UPTIME"]
disconnected = false
restart = ["NO_SUCH_IOC"]
via = "pv"
"""


def watch_rows(stdout: str) -> dict[str, list[str]]:
    """The WATCH table of ``status``: name -> cells (up to the message)."""
    lines = stdout.splitlines()
    header = [i for i, line in enumerate(lines) if line.startswith("WATCH ")]
    if not header:
        return {}
    return {line.split()[0]: line.split() for line in lines[header[0] + 1 :]}


def test_status_lists_the_watches_of_a_remote_ioc(make_ioc, prefix):
    from tests.integration.conftest import FAST_SETTINGS
    from tests.integration.test_bad_input import ECA_NOWTACCESS, may_write, put_status

    settings = FAST_SETTINGS + "".join(
        SELF_WATCH.format(name=name, prefix=prefix) for name in ("ZF_MAG-1", "TEMP")
    )
    ioc = make_ioc(settings).start()
    for name in ("ZF_MAG-1", "TEMP"):
        wait_for(
            lambda n=name: ioc.get(f"BGRSCRPT:WATCH:{n}:STATE", as_string=True) == "OK",
            20,
            f"watch {name} OK",
        )
    # NAMES, read through libca: the names in settings order; no client may write it.
    assert ioc.get("BGRSCRPT:WATCH:NAMES", as_string=True) == "ZF_MAG-1 TEMP"
    assert not may_write(ioc.pv("BGRSCRPT:WATCH:NAMES"))
    assert put_status(ioc.pv("BGRSCRPT:WATCH:NAMES"), "X", dbr.STRING) == ECA_NOWTACCESS
    assert ioc.get("BGRSCRPT:WATCH:NAMES", as_string=True) == "ZF_MAG-1 TEMP"
    assert ioc.get("BGRSCRPT:WATCH:DRYRUN", as_string=True) == "Off"

    # As from another machine: only the IOC's address and its prefix; no settings
    # file, no --watch. The IOC itself says which watches it has.
    env = {
        "EPICS_CA_ADDR_LIST": f"127.0.0.1:{ioc.port}",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "MYPVPREFIX": ioc.prefix,
        "ICPINSTSCRIPTROOT": "",
    }
    result = run_ctl("status", env=env)
    assert result.returncode == 0, (result.stdout, result.stderr)
    rows = watch_rows(result.stdout)
    assert list(rows) == ["ZF_MAG-1", "TEMP"], result.stdout
    assert rows["TEMP"][1:5] == ["OK", "NO_ALARM", "On", "0"], rows

    # Names as arguments filter; --watch of a watch the IOC has adds no second row.
    result = run_ctl("status", "TEMP", env=env)
    assert result.returncode == 0, result.stderr
    assert list(watch_rows(result.stdout)) == ["TEMP"]
    assert "BGRSCRPT_01" not in result.stdout
    result = run_ctl("status", "01", env=env)
    assert result.returncode == 0, result.stderr
    assert watch_rows(result.stdout) == {} and "BGRSCRPT_01" in result.stdout
    result = run_ctl("--watch", "TEMP", "status", env=env)
    assert list(watch_rows(result.stdout)) == ["ZF_MAG-1", "TEMP"]

    # A name the IOC does not have: exit 1, one line naming the ones it has.
    unknown = "bgrscrpt: watch NOPE: no such watch on this IOC (watches: ZF_MAG-1, TEMP)"
    assert failed_with(run_ctl("--watch", "NOPE", "status", env=env)) == unknown
    assert failed_with(run_ctl("status", "NOPE", env=env)) == unknown
    for action in ("enable", "restart"):
        assert failed_with(run_ctl("watch", action, "NOPE", env=env)) == unknown
    assert ioc.get("BGRSCRPT:WATCH:TEMP:RESTART_CNT") == 0

    # ...and one it has works by name alone.
    result = run_ctl("watch", "enable", "TEMP", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("watch TEMP: enabled")


@pytest.mark.skipif(shutil.which("procServ") is None, reason="procServ is not installed")
@pytest.mark.timeout(180)
def test_watch_commands(make_ioc, config_dir: Path, tmp_path: Path, port_pool, prefix):
    from devsupport.epics_base import SimDevice
    from tests.integration.conftest import FAST_SETTINGS

    sim = SimDevice(tmp_path, prefix=prefix, port=port_pool.take(), name="SIM_01").start()
    try:
        settings = FAST_SETTINGS + textwrap.dedent(f"""
            [[watch]]
            name = "SIM"
            pvs = ["{sim.pv()}"]
            delay = 0.5
            restart = ["SIM_01"]
            procserv = {{ SIM_01 = "{sim.control}" }}
            verify_timeout = 20.0
            """)
        ioc = make_ioc(settings).start()
        p = ("--prefix", ioc.prefix)
        wait_for(lambda: ioc.get("BGRSCRPT:WATCH:SIM:STATE", as_string=True) == "OK", 20, "OK")

        # status finds the watches named in a settings file (--config) or with --watch.
        result = run_ctl(*p, "--config", str(config_dir / "bgrscrpt.toml"), "status")
        assert result.returncode == 0, result.stderr
        row = next(line.split() for line in result.stdout.splitlines() if line.startswith("SIM "))
        assert row[1:5] == ["OK", "NO_ALARM", "On", "0"], row
        assert "SIM " in run_ctl(*p, "--watch", "SIM", "status").stdout

        result = run_ctl(*p, "watch", "disable", "SIM")
        assert result.returncode == 0, result.stderr
        assert ioc.get("BGRSCRPT:WATCH:SIM:STATE", as_string=True) == "DISABLED"
        result = run_ctl(*p, "watch", "enable", "SIM")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("watch SIM: enabled")
        assert ioc.get("BGRSCRPT:WATCH:SIM:ENABLE", as_string=True) == "On"

        old_child = sim.child_pid()
        result = run_ctl(*p, "watch", "restart", "SIM")
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("watch SIM: restart sent")
        assert ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 1
        wait_for(lambda: sim.child_pid() != old_child, 30, "procServ to run a new SIM_01")

        # The restart path broken: procServ gone, so the restart cannot take effect.
        sim.stop()
        wait_for(lambda: ioc.get("BGRSCRPT:WATCH:SIM:STATE", as_string=True) != "OK", 30, "not OK")
        result = run_ctl(*p, "--timeout", "30", "watch", "restart", "SIM")
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stderr.startswith("bgrscrpt: watch SIM: "), result.stderr
    finally:
        sim.stop()
