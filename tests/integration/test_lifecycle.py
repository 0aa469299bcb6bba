"""The real IOC, driven only through pyepics."""

from __future__ import annotations

import signal

from tests.integration.conftest import FAST_SETTINGS, write_script
from tests.integration.harness import process_gone, wait_for

IBEX_SCRIPT = """
import os, sys, time
sys.path.insert(0, os.path.join(os.environ["KIT_ROOT"], "ISIS", "inst_servers", "master"))
from server_common.helpers import register_ioc_start
register_ioc_start("BGRSCRPT_01")
print("up", flush=True)
while True:
    time.sleep(0.2)
"""


def test_ibex_script_runs_registers_and_stops(make_ioc, config_dir):
    write_script(config_dir, "background_script.py", IBEX_SCRIPT)
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING")
    wait_for(lambda: ioc.get("BGRSCRPT_01:REGISTERED", as_string=True) == "Yes", 10, "REGISTERED")
    pid = ioc.get("BGRSCRPT_01:PID")
    assert pid > 0
    assert ioc.status("BGRSCRPT_02") == "STOPPED"
    assert "no script at" in ioc.get("BGRSCRPT_02:MSG", as_string=True)
    beat = ioc.get("BGRSCRPT_01:HEARTBEAT")
    wait_for(lambda: ioc.get("BGRSCRPT_01:HEARTBEAT") > beat, 5, "HEARTBEAT to count")
    wait_for(lambda: "up" in (ioc.get("BGRSCRPT_01:LOG", as_string=True) or ""), 5, "LOG")
    ioc.put("BGRSCRPT_01:STOP", 1)
    ioc.wait_status("STOPPED")
    assert ioc.get("BGRSCRPT_01:PID") == 0
    assert ioc.get("BGRSCRPT_01:REGISTERED", as_string=True) == "No"
    assert process_gone(pid)
    ioc.put("BGRSCRPT_01:START", 1)
    ioc.wait_status("RUNNING")
    assert ioc.get("BGRSCRPT_01:START_CNT") == 2
    assert ioc.get("BGRSCRPT_01:START") == 0


def test_failing_script_backs_off_then_goes_fatal(make_ioc, config_dir):
    write_script(config_dir, "background_script.py", "import time\ntime.sleep(0.7)\n1/0\n")
    # A back-off long enough that MSG cannot move on before it is read.
    ioc = make_ioc(
        FAST_SETTINGS.replace("backoff_initial = 0.2", "backoff_initial = 2.0").replace(
            "backoff_max = 1.0", "backoff_max = 4.0"
        )
    ).start()
    ioc.wait_status("BACKOFF", timeout=10)
    assert "ZeroDivisionError" in ioc.get("BGRSCRPT_01:MSG", as_string=True)
    ioc.wait_status("FATAL", timeout=20)
    assert ioc.get("BGRSCRPT_01:STATUS.SEVR", as_string=True) == "MAJOR"
    assert ioc.get("BGRSCRPT_01:EXIT_CODE") == 1


def test_sigkill_of_the_ioc_leaves_no_script(make_ioc, config_dir):
    write_script(
        config_dir,
        "background_script.py",
        """
        import subprocess, sys, time
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        while True:
            time.sleep(1)
        """,
    )
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING")
    pid = ioc.get("BGRSCRPT_01:PID")
    ioc.kill()
    wait_for(lambda: process_gone(pid), 5, "the script to die with the IOC")
    # The grandchild is checked by the test_tag fixture: nothing tagged may be left.


def test_sigterm_stops_every_script(make_ioc, config_dir):
    write_script(config_dir, "background_script.py", IBEX_SCRIPT)
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING")
    pid = ioc.get("BGRSCRPT_01:PID")
    ioc.signal(signal.SIGINT)
    assert ioc.stop() == 0
    assert process_gone(pid)
