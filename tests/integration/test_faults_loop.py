"""The real IOC's event loop keeps its beat while watches wait on PVs that never come.

A watch whose PV never connects once froze the whole IOC (100 % CPU, no Channel
Access, SIGTERM ignored) from the end of the connect grace (5 s) on; with
``disconnected = true`` and the target down at start, for `delay` seconds.
"""

from __future__ import annotations

import time

from tests.integration.beat import Heartbeat
from tests.integration.harness import wait_for

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
