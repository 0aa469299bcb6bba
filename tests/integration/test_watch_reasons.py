"""A watch's MSG says why a watched PV is disconnected, in words a person can act on:
a real IOC (an EPICS base IOC) that stops answering, then one that dies."""

from __future__ import annotations

import os
import signal

from tests.integration.harness import wait_for
from tests.integration.test_watch_procserv import msg, sims, watch_settings  # noqa: F401

T = 30.0


def test_msg_says_why_a_watched_pv_is_disconnected(make_ioc, sims):  # noqa: F811
    sim = sims(procserv=False)
    settings = watch_settings(sim, delay=3600.0)
    ioc = make_ioc(settings, env={"EPICS_CA_CONN_TMO": "1"}).start()
    wait_for(lambda: ioc.get("BGRSCRPT:WATCH:SIM:STATE", as_string=True) == "OK", T, "OK")
    assert sim.proc is not None

    os.kill(sim.proc.pid, signal.SIGSTOP)  # its host hangs: nothing comes back
    try:
        unresponsive = f"{sim.pv()} disconnected (unresponsive server at 127.0.0.1:{sim.port}"
        wait_for(lambda: unresponsive in msg(ioc), T, "the unresponsive server in MSG")
    finally:
        os.kill(sim.proc.pid, signal.SIGCONT)
    wait_for(lambda: ioc.get("BGRSCRPT:WATCH:SIM:STATE", as_string=True) == "OK", T, "OK again")

    sim.proc.kill()  # it dies: its host's kernel closes the circuit
    sim.proc.wait()
    closed = f"{sim.pv()} disconnected (the server at 127.0.0.1:{sim.port} closed the connection"
    wait_for(lambda: closed in msg(ioc), T, "the closed connection in MSG")
