"""``make demo`` (and ``python -m demo``, what it runs), started as a user starts it.

Checked from outside only: over Channel Access (pyepics), over HTTP (the live
plot), and by the flaky device recovering through its watch and procServ. Then
SIGINT, as Ctrl-C sends it, must leave no process behind (the test_tag check).
"""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import epics
import pytest

from devsupport.ports import free_ca_port as _free_port
from tests.integration.harness import wait_for

ROOT = Path(__file__).resolve().parents[2]
READY = "Ctrl-C stops everything."


class DemoProcess:
    """The demo in a session of its own, as in a terminal: Ctrl-C reaches the whole
    foreground process group (``make`` and the demo under it)."""

    def __init__(self, args: list[str], env: dict[str, str] | None = None, make: bool = False):
        command = [sys.executable, "-m", "demo", *args]
        if make:
            command = ["make", "--no-print-directory", "demo", "DEMO_ARGS=" + " ".join(args)]
        self.proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None  # piped
        self.stdout = self.proc.stdout
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_line(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                raise AssertionError(f"no {text!r} from the demo:\n{''.join(self.output)}")
            self.output.append(line)
            if text in line:
                return

    def text(self) -> str:
        return "".join(self.output)

    def interrupt(self, timeout: float = 60.0) -> int:
        """Ctrl-C, and the rest of its output."""
        os.killpg(self.proc.pid, signal.SIGINT)
        status = self.proc.wait(timeout)
        while (line := self.lines.get(timeout=10)) is not None:
            self.output.append(line)
        self.stdout.close()
        return status

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            self.stdout.close()


def caget(name: str, **kw):
    kw.setdefault("timeout", 2.0)
    if kw.get("as_string"):
        kw.setdefault("count", 0)  # the current length, as harness.Ioc.get explains
    return epics.caget(name, use_monitor=False, **kw)


@pytest.mark.timeout(240)
@pytest.mark.skipif(shutil.which("procServ") is None, reason="procServ is not installed")
def test_demo_runs_recovers_and_stops_cleanly(port_pool, prefix, test_tag, tmp_path: Path):
    ports = [port_pool.take() for _ in range(3)]
    demo = DemoProcess([
        "--prefix", prefix, "--ports", ",".join(map(str, ports)),
        "--procserv-port", str(_free_port()), "--var-dir", str(tmp_path / "demo"),
        "--run-period", "3",
    ], make=True)  # fmt: skip
    try:
        demo.wait_line(READY, 120)
        text = demo.text()
        found = re.search(r"live plot \(BGRSCRPT_01\): (http://\S+)", text)
        assert found, text
        plot_url = found.group(1)
        assert "Not running" not in text
        assert f"{prefix}BGRSCRPT:WATCH:FLAKY_01:STATE" in text

        # Channel Access: the slots, the simulated blocks, the DAE and the watch.
        assert caget(f"{prefix}BGRSCRPT_01:PLOT_URL", as_string=True) == plot_url
        for slot in ("BGRSCRPT_01", "BGRSCRPT_02"):

            def running(s: str = slot) -> bool:
                return bool(caget(f"{prefix}{s}:STATUS", as_string=True) == "RUNNING")

            wait_for(running, 30, f"{slot} RUNNING")
        assert abs(caget(f"{prefix}CS:SB:Temp_Sample") - caget(f"{prefix}CS:SB:Temp_SP")) < 5
        run = caget(f"{prefix}DAE:RUNNUMBER", as_string=True)
        watch = f"{prefix}BGRSCRPT:WATCH:FLAKY_01:"
        assert caget(watch + "STATE", as_string=True) == "OK"

        # HTTP: the live plot page and its PNG snapshot.
        with urllib.request.urlopen(plot_url, timeout=10) as page:
            assert page.status == 200 and "html" in page.headers["Content-Type"]
        with urllib.request.urlopen(plot_url.rstrip("/") + "/plot.png", timeout=30) as png:
            assert png.read(8) == b"\x89PNG\r\n\x1a\n"

        # A hardware fault: the watch restarts the flaky IOC through procServ.
        assert epics.caput(f"{prefix}FLAKY_01:FAULT", 1, wait=True, timeout=5) == 1
        wait_for(lambda: caget(watch + "RESTART_CNT") == 1, 60, "the watch to restart FLAKY_01")
        wait_for(lambda: caget(watch + "STATE", as_string=True) == "OK", 60, "recovery")
        assert caget(f"{prefix}FLAKY_01:VALUE.SEVR") == 0
        # A new run comes along (every 3 s here, plus the end-of-run states).
        wait_for(lambda: caget(f"{prefix}DAE:RUNNUMBER", as_string=True) != run, 30, "a new run")

        # make reports the interrupt in its own exit status; the demo must stop cleanly.
        demo.interrupt()
    finally:
        demo.kill()
    assert "stopped; nothing left running." in demo.text(), demo.text()
    assert "Traceback" not in demo.text(), demo.text()


@pytest.mark.timeout(180)
def test_demo_without_procserv_says_what_is_missing(port_pool, prefix, test_tag, tmp_path: Path):
    ports = [port_pool.take() for _ in range(3)]
    # A PATH without procServ on it, as on a machine where it is not installed.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    demo = DemoProcess(
        ["--prefix", prefix, "--ports", ",".join(map(str, ports)),
         "--var-dir", str(tmp_path / "demo")],
        env={"PATH": str(bin_dir)},
    )  # fmt: skip
    try:
        demo.wait_line(READY, 120)
        text = demo.text()
        assert "procServ is not installed" in text
        assert "Not running: the flaky device IOC and its watch FLAKY_01" in text
        assert caget(f"{prefix}BGRSCRPT_02:STATUS", as_string=True) in ("STARTING", "RUNNING")
        assert caget(f"{prefix}BGRSCRPT:WATCH:FLAKY_01:STATE", timeout=0.5) is None
        assert demo.interrupt() == 0, demo.text()
    finally:
        demo.kill()
