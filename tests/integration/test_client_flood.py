"""Clients that open connections and hold them: the IOC keeps supervising.

A host (a port scanner, a client stuck in a reconnect loop, anyone) can open
TCP connections to the CA port and never close them. Each one costs the IOC a
file descriptor. Without a bound, the IOC reached its open-file limit: it could
no longer start a script (the slot went FATAL with "Too many open files"), and
asyncio logged a traceback for every refused accept, thousands a second, while
the event loop spun.
"""

from __future__ import annotations

import contextlib
import resource
import socket

from tests.integration.conftest import FAST_SETTINGS, write_script
from tests.integration.harness import wait_for
from tests.integration.test_slow_client import Beats

OPEN_FILES = 128
"""The IOC's open-file limit in this test (``ulimit -n``), small to reach it fast."""
FLOOD = 2 * OPEN_FILES

SCRIPT = """
import time
while True:
    time.sleep(0.1)
"""


def _small_open_file_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (OPEN_FILES, OPEN_FILES))


def test_connections_held_open_never_take_the_files_scripts_need(make_ioc, config_dir):
    write_script(config_dir, "background_script.py", SCRIPT)
    ioc = make_ioc(FAST_SETTINGS, preexec_fn=_small_open_file_limit).start()
    ioc.wait_status("RUNNING")
    beats = Beats(ioc.pv("BGRSCRPT:HEARTBEAT"))  # connected before the flood
    first_pid = ioc.get("BGRSCRPT_01:PID")
    held: list[socket.socket] = []
    try:
        for _ in range(FLOOD):
            with contextlib.suppress(OSError):
                held.append(socket.create_connection(("127.0.0.1", ioc.port), timeout=2))
        # The IOC must still start a script: restart it while the connections are held.
        assert ioc.put("BGRSCRPT_01:RESTART", 1) == 1
        wait_for(
            lambda: ioc.get("BGRSCRPT_01:PID") not in (None, 0, first_pid),
            15,
            f"a new run (MSG: {ioc.get('BGRSCRPT_01:MSG', as_string=True)!r})",
        )
        ioc.wait_status("RUNNING")
        beats.wait_more(2)
    finally:
        for sock in held:
            sock.close()
    # Once they are gone, new clients are served again.
    wait_for(lambda: ioc.get("BGRSCRPT:VERSION", timeout=1) is not None, 15, "a fresh read")
    beats.check()
    beats.close()
    out = ioc.output()
    assert "Traceback" not in out, out[-3000:]
    refusals = [
        line for line in out.splitlines() if "refused: " in line and "clients connected" in line
    ]
    assert len(refusals) == 1, out[-3000:]
    assert ioc.stop() == 0
