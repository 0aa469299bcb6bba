"""The CA port is the IOC's, or the IOC does not start.

caproto took a random TCP port when the CA port was taken and shared the UDP
search port with SO_REUSEPORT: clients lost searches for both servers. Now a
taken port, TCP or UDP, stops the IOC with exit status 2 and one line naming
the port and what holds it; nothing else starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from devsupport.epics_base import base_ioc_environment
from devsupport.ports import free_loopback_port
from tests.integration.conftest import write_script
from tests.integration.harness import wait_for

HOLD = r"""
import socket, sys, time
kind, port, reuse = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "reuse"
sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
if reuse:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind(("127.0.0.1", port))
if kind == "tcp":
    sock.listen()
print("holding", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder():
    """Start a process that holds a port ("tcp" or "udp"); it is killed at the end."""
    started: list[subprocess.Popen] = []

    def hold(kind: str, port: int, reuse: bool = False) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLD, kind, str(port), "reuse" if reuse else "plain"],
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "holding"
        return proc

    yield hold
    for proc in started:
        if proc.returncode is None:
            proc.kill()
            proc.communicate()


def refused(ioc, timeout: float = 20.0) -> str:
    """Start ``ioc``, expect exit status 2; its one line of output."""
    ioc.start(wait=False)
    assert ioc.proc is not None
    ioc.proc.wait(timeout)
    ioc._out.close()
    out = ioc.output()
    assert ioc.proc.returncode == 2, out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1, out
    assert "Traceback" not in out
    return lines[0]


def test_a_second_ioc_on_the_same_port_stops_and_names_the_first(make_ioc, tmp_path, prefix):
    first = make_ioc().start()
    second_config = tmp_path / "config2"
    second_config.mkdir()
    marker = tmp_path / "second-ran"
    write_script(second_config, "background_script.py", f"open({str(marker)!r}, 'w')\n")
    second = make_ioc(
        prefix=f"{prefix}2:", port=first.port, var_dir=tmp_path / "var2", config_dir=second_config
    )
    line = refused(second)
    assert f"port {first.port}" in line and f"TCP 127.0.0.1:{first.port}" in line, line
    assert f"pid {first.proc.pid}" in line and "bgrscrpt_ioc" in line, line
    assert line.startswith("bgrscrpt-ioc: error:"), line
    # The first still serves, and the second started no script.
    assert first.get("BGRSCRPT:HEARTBEAT") is not None
    assert not marker.exists()


def test_a_tcp_port_held_by_another_process(make_ioc, port_pool, holder):
    ioc = make_ioc()
    proc = holder("tcp", ioc.port)
    line = refused(ioc)
    assert f"TCP 127.0.0.1:{ioc.port}" in line and f"pid {proc.pid}" in line, line
    assert "python" in line, line


@pytest.mark.parametrize("reuse", [False, True], ids=["plain", "SO_REUSEADDR"])
def test_a_udp_search_port_held_by_another_process(make_ioc, holder, reuse):
    # With SO_REUSEADDR the kernel would let the IOC share the port (and take
    # every search sent to 127.0.0.1 from the other process): it must not.
    ioc = make_ioc()
    proc = holder("udp", ioc.port, reuse=reuse)
    line = refused(ioc)
    assert f"UDP 127.0.0.1:{ioc.port}" in line and f"pid {proc.pid}" in line, line


def test_an_address_this_host_does_not_have_is_a_bad_option(make_ioc):
    ioc = make_ioc(args=["--interfaces", "198.51.100.254"])  # TEST-NET-2: nobody's
    line = refused(ioc)
    assert "--interfaces 198.51.100.254: this host has no such address" in line, line


def test_the_port_is_never_drifted_even_when_it_frees_up_later(make_ioc, holder):
    ioc = make_ioc()
    proc = holder("tcp", ioc.port)
    refused(ioc)
    proc.kill()
    proc.communicate()
    again = make_ioc(port=ioc.port, var_dir=ioc.var_dir)
    again.start()
    assert again.get("BGRSCRPT:VERSION") is not None


def test_an_epics_base_ioc_started_later_may_share_the_search_port(make_ioc, prefix, tmp_path):
    """As EPICS allows: base's rsrv joins a search port with SO_REUSEADDR, and a
    broadcast search (what IBEX clients send, to 127.255.255.255) reaches both."""
    pytest.importorskip("epicscorelibs")
    ioc = make_ioc().start()
    db = tmp_path / "shared.db"
    db.write_text(f'record(ai, "{prefix}BASE:AI") {{ field(VAL, "1.5") }}\n')
    env = {
        **base_ioc_environment(os.environ, ioc.port, free_loopback_port()),
        "EPICS_CAS_INTF_ADDR_LIST": "",  # base's default: every interface
    }
    base = subprocess.Popen(
        [sys.executable, "-m", "epicscorelibs.ioc", "-d", str(db)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        code = r"""
import sys, epics
names = sys.argv[1:]
print(" ".join(str(epics.caget(n, timeout=5)) for n in names))
"""
        client_env = {
            **os.environ,
            "EPICS_CA_AUTO_ADDR_LIST": "NO",
            "EPICS_CA_ADDR_LIST": f"127.255.255.255:{ioc.port}",
        }
        names = [ioc.pv("BGRSCRPT:UPTIME"), f"{prefix}BASE:AI"]

        def both() -> list[str]:
            run = subprocess.run(
                [sys.executable, "-c", code, *names],
                env=client_env,
                capture_output=True,
                text=True,
                timeout=30,
            )
            values = run.stdout.split()
            return values if len(values) == 2 and "None" not in values else []

        values = wait_for(both, 30, "both IOCs found by broadcast")
        assert float(values[1]) == 1.5
    finally:
        os.killpg(base.pid, signal.SIGKILL)
        base.communicate()
    assert "Traceback" not in ioc.output()
