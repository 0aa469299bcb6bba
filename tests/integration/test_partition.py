"""Channel Access clients through a network partition: the link to a server stops
carrying anything for longer than ``EPICS_CA_CONN_TMO``, then comes back.

Between each client and its server sits a relay that can cut the link
(tests/ca_relay.py). The clients: the IOC's watches (caproto's asyncio client,
in the real IOC), the live plot's monitors (the threading client) and
``bgrscrpt log -f`` (the threading client, in the real CLI). The servers: an
EPICS base IOC under procServ, and the real IOC. Each client must show the
outage, heal when the link returns, and act on what happens after.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from caproto.threading import client as threading_client

from bgrscrpt_ioc.ca.threading_client import Context as ThreadingContext
from bgrscrpt_ioc.plot.sampler import Monitors
from devsupport.epics_base import SimDevice
from tests.ca_relay import CaRelay
from tests.integration.conftest import write_script
from tests.integration.harness import wait_for
from tests.integration.test_ctl import next_line, read_lines
from tests.integration.test_watch_procserv import msg, wait_alarm, wait_state, watch_settings

CONN_TMO = 2.0
# caproto declares a silent server unresponsive CONN_TMO + 1 s after it last heard
# from it, once an echo has gone unanswered for this long (caproto's default: 5 s).
ECHO_TIMEOUT = 1.0
NOTICED = CONN_TMO + 1 + ECHO_TIMEOUT + 10  # generous: two cores shared with other runs
T = 60.0


def client_env(relay: CaRelay) -> dict[str, str]:
    """A CA client's environment: its server is found only through ``relay``."""
    return {
        "EPICS_CA_ADDR_LIST": f"127.0.0.1:{relay.port}",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CA_CONN_TMO": str(CONN_TMO),
        "CAPROTO_RESPONSIVENESS_TIMEOUT_SEC": str(ECHO_TIMEOUT),
    }


@pytest.fixture
def relays():
    made: list[CaRelay] = []

    def make(port: int) -> CaRelay:
        relay = CaRelay(port).start()
        made.append(relay)
        return relay

    yield make
    for relay in made:
        relay.close()


@pytest.fixture
def sim(tmp_path, port_pool, prefix, test_tag):
    device = SimDevice(tmp_path, prefix=f"{prefix}D:", port=port_pool.take())
    yield device.start()
    device.stop()


def restarts(ioc) -> int:
    return ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT")


# ---- the watches -----------------------------------------------------------------------


def test_watch_shows_the_outage_acts_on_it_and_on_a_fault_after_it(make_ioc, sim, relays):
    """disconnected = true: the outage itself is a reason to restart."""
    relay = relays(sim.port)
    settings = watch_settings(sim, disconnected=True, delay=1.0, verify_timeout=T)
    ioc = make_ioc(settings, env=client_env(relay)).start()
    wait_state(ioc, "OK")
    wait_alarm(ioc, "NO_ALARM")

    relay.cut()
    wait_alarm(ioc, "DISCONNECTED", timeout=NOTICED)
    # It acts: procServ (not behind the cut) restarts the IOC it cannot see.
    wait_for(lambda: restarts(ioc) == 1, T, f"a restart (MSG {msg(ioc)!r})")
    wait_state(ioc, "VERIFYING")

    relay.restore()
    wait_state(ioc, "OK")
    wait_alarm(ioc, "NO_ALARM")
    assert f"restarted {sim.name}, recovered in" in msg(ioc)

    sim.fault()  # a fault after the link returned
    wait_for(lambda: restarts(ioc) == 2, T, f"a restart for the new fault (MSG {msg(ioc)!r})")
    wait_state(ioc, "OK")
    wait_alarm(ioc, "NO_ALARM")
    assert restarts(ioc) == 2


def test_a_restart_under_way_when_the_link_drops_does_not_loop(make_ioc, sim, relays):
    """disconnected = false: the restarted IOC comes up healthy behind the cut; once
    the link is back the watch sees it and is satisfied, with no further restart."""
    relay = relays(sim.port)
    settings = watch_settings(
        sim, disconnected=False, delay=1.0, verify_timeout=20.0, backoff=1.0, max_restarts=5
    )
    ioc = make_ioc(settings, env=client_env(relay)).start()
    wait_state(ioc, "OK")
    wait_alarm(ioc, "NO_ALARM")

    sim.fault()
    wait_state(ioc, "PENDING")  # the restart goes out in a second
    relay.cut()  # the old IOC's end and the new IOC's answers are held back
    wait_for(lambda: restarts(ioc) == 1, T, f"the restart (MSG {msg(ioc)!r})")
    wait_alarm(ioc, "DISCONNECTED", timeout=NOTICED)
    assert restarts(ioc) == 1
    wait_for(lambda: sim.severity() == 0, T, "the new IOC healthy (seen directly)")
    relay.restore()
    wait_state(ioc, "OK")
    wait_alarm(ioc, "NO_ALARM")
    assert restarts(ioc) == 1, msg(ioc)
    assert f"restarted {sim.name}, recovered in" in msg(ioc)

    sim.fault()
    wait_for(lambda: restarts(ioc) == 2, T, f"a restart for the new fault (MSG {msg(ioc)!r})")
    wait_state(ioc, "OK")


# ---- the live plot's monitors ------------------------------------------------------------


def test_plot_monitors_show_the_outage_as_a_gap_and_resume(sim, relays, monkeypatch):
    relay = relays(sim.port)
    for key, value in client_env(relay).items():
        monkeypatch.setenv(key, value)
    # Read by caproto when it is imported (this process imported it long ago).
    monkeypatch.setattr(threading_client, "RESPONSIVENESS_TIMEOUT", ECHO_TIMEOUT)
    context = ThreadingContext()
    monitors = Monitors([sim.pv()], context=context)
    try:
        wait_for(lambda: not math.isnan(monitors.latest()[0]), T, "a value")
        relay.cut()
        wait_for(lambda: math.isnan(monitors.latest()[0]), NOTICED, "a gap during the outage")
        relay.restore()
        wait_for(lambda: not math.isnan(monitors.latest()[0]), T, "values again")
        sim.fault()  # INVALID after the link returned: a gap again
        wait_for(lambda: math.isnan(monitors.latest()[0]), T, "a gap for the fault")
    finally:
        monitors.close()
        context.disconnect(wait=False)


# ---- bgrscrpt log -f ---------------------------------------------------------------------

SLOW_COUNTER = """
import itertools, time
for n in itertools.count():
    print(f"line {n}", flush=True)
    time.sleep(1.0)
"""


def test_log_follow_reports_the_outage_and_resumes(make_ioc, config_dir: Path, relays):
    write_script(config_dir, "background_script.py", SLOW_COUNTER)
    ioc = make_ioc().start()
    ioc.wait_status("RUNNING")
    relay = relays(ioc.port)
    follower = subprocess.Popen(
        [sys.executable, "-m", "bgrscrpt_ioc.ctl", "--prefix", ioc.prefix, "log", "01", "-f"],
        env={**os.environ, **client_env(relay)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert follower.stdout is not None and follower.stderr is not None  # both piped
    out, err = read_lines(follower.stdout), read_lines(follower.stderr)
    numbers: list[int] = []

    def read_until(stream, wanted, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = next_line(stream, deadline)
            assert line is not None, f"no {wanted!r} within {timeout:g} s"
            if stream is out and line.startswith("line "):
                numbers.append(int(line.split()[1]))
            if wanted(line):
                return

    try:
        read_until(out, lambda line: len(numbers) >= 3, T)
        relay.cut()
        read_until(err, lambda line: "connection to the IOC lost" in line, NOTICED)
        while (line := next_line(out, time.monotonic() + 0.5)) is not None:
            numbers.append(int(line.split()[1]))  # what got through before the cut
        last = numbers[-1]
        relay.restore()
        read_until(err, lambda line: "connected again" in line, T)
        # The lines written during the outage, then new ones.
        read_until(out, lambda line: numbers[-1] >= last + 8, T)
        # LOG holds 20 lines (20 s of this script), more than the outage lasts:
        # followed across it, the output still reads as one unbroken stream.
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), numbers
    finally:
        follower.send_signal(signal.SIGINT)
        assert follower.wait(15) == 0
        follower.stdout.close()
        follower.stderr.close()
