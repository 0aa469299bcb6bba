"""The real IOC's event loop keeps its beat while watches wait on PVs that never come.

A watch whose PV never connects once froze the whole IOC (100 % CPU, no Channel
Access, SIGTERM ignored) from the end of the connect grace (5 s) on; with
``disconnected = true`` and the target down at start, for `delay` seconds.
"""

from __future__ import annotations

import contextlib
import signal
import time

import epics
import psutil

from tests.integration.beat import Heartbeat
from tests.integration.conftest import write_script
from tests.integration.harness import keeper_of, wait_for

WATCHES = """
[[watch]]
name = "NEVER"
pvs = ["{p}NOSUCH:PV"]
disconnected = false
restart = ["X"]
via = "pv"

[[watch]]
name = "DOWN"
pvs = ["{p}NOSUCH:OTHER"]
disconnected = true
delay = 2.0
restart = ["Y"]
via = "pv"
"""


def test_watches_on_pvs_that_never_connect_leave_the_loop_free(make_ioc, prefix):
    ioc = make_ioc(WATCHES.format(p=prefix)).start()
    ioc.put("BGRSCRPT:WATCH:DRYRUN", 1)  # DOWN decides to restart; nothing is sent
    with Heartbeat(prefix) as beat:
        # Past the connect grace (5 s from the start) and DOWN's delay after it.
        wait_for(
            lambda: (
                "DRYRUN: would restart Y"
                in (ioc.get("BGRSCRPT:WATCH:DOWN:MSG", as_string=True) or "")
            ),
            15.0,
            "DOWN to decide on a restart",
        )
        end = time.monotonic() + 1.5
        while time.monotonic() < end:
            beat.check()
            time.sleep(0.1)
        beat.check()
    assert ioc.get("BGRSCRPT:WATCH:NEVER:STATE", as_string=True) == "OK"
    assert ioc.stop(timeout=10.0) == 0  # SIGTERM is heard at once


def lag(ioc) -> tuple[float, str]:
    return ioc.get("BGRSCRPT:LOOP_LAG"), ioc.get("BGRSCRPT:LOOP_LAG.SEVR", as_string=True)


def test_loop_lag_shows_a_stall_with_its_alarm_then_clears(make_ioc, prefix):
    """A stall (the IOC stopped for 1.5 s) shows on LOOP_LAG as MAJOR, then clears."""
    ioc = make_ioc("[ioc]\nloop_lag_high = 300\nloop_lag_hihi = 1000\n", slots=1).start()
    assert ioc.get("BGRSCRPT:LOOP_LAG.EGU", as_string=True) == "ms"
    assert (ioc.get("BGRSCRPT:LOOP_LAG.HIGH"), ioc.get("BGRSCRPT:LOOP_LAG.HIHI")) == (300, 1000)
    wait_for(lambda: lag(ioc)[1] == "NO_ALARM" and 0 <= lag(ioc)[0] < 300, 10, "a calm loop")
    seen: list[tuple[float, str]] = []
    pv = epics.PV(
        ioc.pv("BGRSCRPT:LOOP_LAG"),
        form="time",
        callback=lambda value, severity, **_: seen.append((value, severity)),
    )
    try:
        assert pv.wait_for_connection(5)
        ioc.signal(signal.SIGSTOP)
        time.sleep(1.5)  # the stall itself: nothing to poll for while the IOC is stopped
        ioc.signal(signal.SIGCONT)
        wait_for(lambda: any(v >= 1000 and s == 2 for v, s in seen), 10, f"MAJOR lag ({seen})")
        wait_for(lambda: seen and seen[-1][1] == 0 and seen[-1][0] < 300, 10, "the lag to clear")
    finally:
        pv.disconnect()
    assert ioc.stop() == 0


HUGE_LINES = 300_000


def test_checking_a_huge_script_leaves_the_loop_free(make_ioc, config_dir, prefix):
    """START of a 300,000-line script with a syntax error at its end: the check (a compile)
    once held the loop for seconds. Now the heartbeat keeps its beat, and the error still
    lands as a spawn failure: MSG says where, nothing was started."""
    ioc = make_ioc("[supervisor]\nstartsecs = 0.5\n", slots=1).start()
    script = config_dir / "background_script.py"
    assert ioc.get("BGRSCRPT_01:MSG", as_string=True) == f"no script at {script}"
    script.write_text("".join(f"x{i} = {i}\n" for i in range(HUGE_LINES)) + "def broken(:\n")
    with Heartbeat(prefix) as beat:
        ioc.put("BGRSCRPT_01:START", 1)
        wait_for(
            lambda: f"line {HUGE_LINES + 1}" in (ioc.get("BGRSCRPT_01:MSG", as_string=True) or ""),
            30,
            "the syntax error",
        )
        beat.check()
    assert ioc.status() == "STOPPED"
    assert ioc.get("BGRSCRPT_01:START_CNT") == 0, "the broken script was started"
    msg = ioc.get("BGRSCRPT_01:MSG", as_string=True)
    assert msg.startswith(f"syntax error in {script} line {HUGE_LINES + 1}"), msg
    assert ioc.stop() == 0


def test_a_start_the_stopped_keeper_never_answers_leaves_the_loop_free(
    make_ioc, config_dir, prefix
):
    """kill -STOP on the keeper, then START: the keeper never answers. The heartbeat keeps
    its beat through the wait; then the keeper is replaced, MSG says why the start failed,
    and the next START runs the script."""
    write_script(config_dir, "background_script.py", "import time\ntime.sleep(600)\n")
    ioc = make_ioc('[supervisor]\nautorestart = "Off"\n', slots=1).start()
    ioc.wait_status("RUNNING")
    ioc.put("BGRSCRPT_01:STOP", 1)
    ioc.wait_status("STOPPED")
    keeper = keeper_of(ioc)
    keeper.suspend()
    try:
        with Heartbeat(prefix) as beat:
            ioc.put("BGRSCRPT_01:START", 1, wait=False)
            wait_for(
                lambda: (
                    "did not answer a start" in (ioc.get("BGRSCRPT_01:MSG", as_string=True) or "")
                ),
                15,
                "the failed start's MSG",
            )
            beat.check()
        msg = ioc.get("BGRSCRPT_01:MSG", as_string=True)
        assert msg.startswith(f"cannot start {config_dir / 'background_script.py'}: "), msg
        wait_for(lambda: keeper_of(ioc).pid != keeper.pid, 10, "a new keeper")
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            keeper.resume()
    ioc.put("BGRSCRPT_01:START", 1)
    ioc.wait_status("RUNNING")
    assert ioc.stop() == 0
