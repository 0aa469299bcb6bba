"""Signals to the real IOC: SIGHUP stops it as gracefully as SIGTERM, and says so.

SIGHUP once killed the IOC at once: nothing logged, the scripts SIGKILLed by the
guardian, their runs left open. Now every stop signal stops each script with
SIGTERM (it may clean up), records how its run ended and exits 0.
"""

from __future__ import annotations

import signal

import pytest

from tests.integration.conftest import FAST_SETTINGS, write_script
from tests.integration.faults import saved_runs
from tests.integration.harness import process_gone, wait_for

S01 = "BGRSCRPT_01"
CLEANS_UP = """
import signal, sys, time
def leave(signum, frame):
    print("cleaning up after", signal.Signals(signum).name, flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, leave)
print("up", flush=True)
while True:
    time.sleep(0.1)
"""


@pytest.mark.parametrize("signum", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT])
def test_each_stop_signal_stops_the_scripts_gracefully_and_is_logged(make_ioc, config_dir, signum):
    write_script(config_dir, "background_script.py", CLEANS_UP)
    ioc = make_ioc(FAST_SETTINGS, slots=1).start()
    ioc.wait_status("RUNNING")
    wait_for(lambda: "up" in (ioc.get(f"{S01}:LOG", as_string=True) or ""), 5, "the script up")
    pid = ioc.get(f"{S01}:PID")
    ioc.signal(signum)
    assert ioc.proc is not None
    assert ioc.proc.wait(20) == 0
    assert process_gone(pid)
    name = signal.Signals(signum).name
    out = ioc.output()
    assert f"{name}: stopping every script, then the IOC" in out, out
    log = (ioc.var_dir / "logs" / f"{S01}.log").read_text()
    assert "cleaning up after SIGTERM" in log, log  # SIGTERM, not the guardian's SIGKILL
    assert saved_runs(ioc.var_dir) == [(pid, 1, 3, "stop")]
    assert "Traceback" not in out
    ioc.stop()


# Ignores SIGTERM: the IOC's stop waits out stop_timeout for it, then SIGKILLs it.
STUBBORN = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
while True:
    time.sleep(0.1)
"""


def test_stop_signals_while_stopping_do_not_cut_the_stop_short(make_ioc, config_dir):
    # The handlers were removed before the scripts were stopped: a second Ctrl-C
    # (or SIGTERM) while a script took its time killed the IOC at once, with a
    # KeyboardInterrupt traceback (or nothing), and its runs left unrecorded.
    write_script(config_dir, "background_script.py", STUBBORN)
    ioc = make_ioc(FAST_SETTINGS.replace("stop_timeout = 2.0", "stop_timeout = 3.0"), slots=1)
    ioc.start()
    ioc.wait_status("RUNNING")
    wait_for(lambda: "up" in (ioc.get(f"{S01}:LOG", as_string=True) or ""), 5, "the script up")
    pid = ioc.get(f"{S01}:PID")
    ioc.signal(signal.SIGTERM)
    wait_for(lambda: "shutting down" in ioc.output(), 5, "the IOC shutting down")
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        ioc.signal(signum)
    assert ioc.proc is not None
    assert ioc.proc.wait(20) == 0
    assert process_gone(pid)
    out = ioc.output()
    assert "SIGINT: already stopping" in out, out
    assert saved_runs(ioc.var_dir) == [(pid, 1, -9, "stop")]
    assert "Traceback" not in out, out
    ioc.stop()
