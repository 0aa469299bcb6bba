"""Alarm recovery under faults, on the real IOC: LOCKOUT says why and how out (also after
an IOC restart), and a peer that floods the procServ client cannot grow the IOC."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import psutil

from devsupport.ports import free_loopback_port
from tests.integration.beat import Heartbeat
from tests.integration.harness import wait_for


def _watch(prefix: str, endpoint: str, **extra: object) -> str:
    keys = {
        "name": '"ZF"',
        "pvs": f'["{prefix}NOSUCH:PV"]',  # never connects: disconnected after the 5 s grace
        "disconnected": "true",
        "delay": "0",
        "restart": '["ZFCNTRL_01"]',
        "procserv": f'{{ ZFCNTRL_01 = "{endpoint}" }}',
        **extra,
    }
    lines = ["[[watch]]"] + [f"{key} = {value}" for key, value in keys.items()]
    return "\n".join(lines) + "\n"


def watch_msg(ioc) -> str:
    return ioc.get("BGRSCRPT:WATCH:ZF:MSG", as_string=True) or ""


def test_lockout_names_the_last_failure_and_the_way_out_also_after_a_restart(
    make_ioc, prefix, port_pool
):
    endpoint = f"127.0.0.1:{free_loopback_port()}"  # nothing listens: procServ refuses
    settings = _watch(prefix, endpoint, max_restarts=1, backoff=0)
    ioc = make_ioc(settings, slots=1).start()
    expected = (
        f"LOCKOUT: 1 restarts in 3600 s; last failure: procServ at {endpoint} refused the "
        "connection; put ENABLE 1 to clear"
    )
    with Heartbeat(prefix) as beat:
        wait_for(lambda: watch_msg(ioc) == expected, 20, f"MSG {expected!r}")
        assert ioc.get("BGRSCRPT:WATCH:ZF:STATE", as_string=True) == "LOCKOUT"
        beat.check()
    assert ioc.stop() == 0
    # A new IOC on the same var dir still knows why, and the way out.
    second = make_ioc(None, slots=1, port=port_pool.take()).start()
    assert second.get("BGRSCRPT:WATCH:ZF:STATE", as_string=True) == "LOCKOUT"
    assert watch_msg(second) == expected
    second.put("BGRSCRPT:WATCH:ZF:ENABLE", 1)
    # The way out works (the PV still never connects: once the grace is over, the
    # watch restarts, fails and locks out again; the log keeps the clearing, as the
    # outcome "cleared", whatever MSG says by the time the put's own line is written).
    cleared = "watch ZF: cleared: LOCKOUT cleared by ENABLE"
    wait_for(lambda: cleared in second.output(), 5, "cleared")
    assert second.stop() == 0


FLOODER = """
import socket, sys
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", 0))
server.listen(4)
print(server.getsockname()[1], flush=True)
chunk = b"x" * 65536  # and never a newline
while True:
    conn, _ = server.accept()
    try:
        while True:
            conn.sendall(chunk)
    except OSError:
        conn.close()
"""


@contextmanager
def flooding_peer() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-c", FLOODER], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        yield f"127.0.0.1:{int(proc.stdout.readline())}"
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_peer_flooding_one_endless_line_is_no_procserv(make_ioc, prefix):
    with flooding_peer() as endpoint:
        # delay: the restart goes out by hand, not after the grace
        ioc = make_ioc(_watch(prefix, endpoint, delay=3600), slots=1).start()
        assert ioc.proc is not None
        process = psutil.Process(ioc.proc.pid)
        before = process.memory_info().rss
        with Heartbeat(prefix) as beat:
            ioc.put("BGRSCRPT:WATCH:ZF:RESTART", 1)
            wait_for(lambda: "does not talk like procServ" in watch_msg(ioc), 15, "the verdict")
            grown = process.memory_info().rss - before
            beat.check()
        msg = watch_msg(ioc)
        assert f"{endpoint} does not talk like procServ (a line of more than 65536 bytes" in msg
        assert ioc.get("BGRSCRPT:WATCH:ZF:STATE", as_string=True) == "FAILED"
        assert grown < 30 * 1024 * 1024, f"the IOC grew {grown / 1e6:.0f} MB"
        assert ioc.stop() == 0
    assert "Traceback" not in ioc.output()
