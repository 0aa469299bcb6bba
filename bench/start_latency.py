"""Figure 1: ``caput START`` -> the script's first statement, vs bare ``python3 script.py``.

The script's first statement sends its ``time.monotonic()`` (CLOCK_MONOTONIC is
system-wide) in a UDP datagram to the bench on 127.0.0.1; the port comes in an
environment variable the IOC passes on. The script then exits with status 0; with
``autorestart = "Off"`` and ``startsecs = 0`` the slot goes to EXITED, and the next
``caput START 1`` starts it again. The peer is the same file started with
``subprocess.Popen([sys.executable, script])`` from the bench, same environment.
The two alternate, IOC first then bare, for ``REPEATS`` pairs after ``WARMUP``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import epics

from .common import BgrIoc, median, percentile, ratio

REPEATS = 20
WARMUP = 2
GOAL_RATIO = 1.3
PORT_VAR = "BENCH_START_UDP_PORT"
SLOT = "BGRSCRPT_01"

# One line: the first statement of the script is the send.
SCRIPT = (
    "import os, socket, time; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto("
    "f'{time.monotonic()!r} {os.getpid()}'.encode(), "
    f"('127.0.0.1', int(os.environ['{PORT_VAR}'])))\n"
)

SETTINGS = """
[supervisor]
autorestart = "Off"
startsecs = 0.0
start_limit_burst = 1000
start_limit_interval = 1.0
"""


class _Receiver:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def drain(self) -> None:
        self.sock.setblocking(False)
        try:
            while True:
                self.sock.recv(256)
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)

    def receive(self, timeout: float = 10.0) -> tuple[float, int]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(256).decode()
        stamp, pid = data.split()
        return float(stamp), int(pid)

    def close(self) -> None:
        self.sock.close()


def _via_ioc(ioc: BgrIoc, rx: _Receiver) -> float:
    rx.drain()
    t0 = time.monotonic()
    epics.caput(ioc.pv(f"{SLOT}:START"), 1, wait=False)
    t1, _pid = rx.receive()
    ioc.wait_status("EXITED", SLOT, timeout=15.0)
    return t1 - t0


def _bare(script: Path, env: dict[str, str], cwd: Path, rx: _Receiver) -> float:
    rx.drain()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, str(script)], env=env, cwd=cwd, stdin=subprocess.DEVNULL
    )
    t1, pid = rx.receive()
    proc.wait(15.0)
    assert pid == proc.pid, (pid, proc.pid)
    return t1 - t0


def run(workdir: Path, port: int, prefix: str) -> dict:
    rx = _Receiver()
    env_extra = {PORT_VAR: str(rx.port)}
    ioc = BgrIoc(
        workdir,
        port=port,
        prefix=prefix,
        settings=SETTINGS,
        scripts={"background_script.py": SCRIPT},
        env=env_extra,
    )
    ioc_ms: list[float] = []
    bare_ms: list[float] = []
    try:
        with ioc:
            # At start-up the IOC starts the script once by itself; let that run end.
            ioc.wait_status("EXITED", SLOT, timeout=20.0)
            script = ioc.config_dir / "background_script.py"
            bare_env = dict(os.environ, **env_extra)
            for i in range(WARMUP + REPEATS):
                a = _via_ioc(ioc, rx)
                time.sleep(0.1)
                b = _bare(script, bare_env, ioc.config_dir, rx)
                time.sleep(0.1)
                if i >= WARMUP:
                    ioc_ms.append(a * 1e3)
                    bare_ms.append(b * 1e3)
            final_msg = epics.caget(ioc.pv(f"{SLOT}:MSG"), as_string=True)
    finally:
        rx.close()
    pair_ratios = [a / b for a, b in zip(ioc_ms, bare_ms, strict=True)]
    result = {
        "repeats": REPEATS,
        "ioc_ms": ioc_ms,
        "bare_ms": bare_ms,
        "ioc_median_ms": median(ioc_ms),
        "bare_median_ms": median(bare_ms),
        "ioc_p90_ms": percentile(ioc_ms, 90),
        "bare_p90_ms": percentile(bare_ms, 90),
        "median_pair_ratio": median(pair_ratios),
        "ratio_of_medians": ratio(median(ioc_ms), median(bare_ms)),
        "goal_ratio": GOAL_RATIO,
        "last_msg": final_msg,
        "ioc_stopped_cleanly": ioc.stopped_cleanly,
    }
    result["met"] = result["median_pair_ratio"] <= GOAL_RATIO
    return result
