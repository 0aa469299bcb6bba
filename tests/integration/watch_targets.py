"""Real targets for the watch tests: EPICS base IOCs (epicscorelibs) running
db_templates/sim_device.db, under Debian's procServ or on their own.

Every process inherits the test tag from the environment (the ``test_tag``
fixture sets it), runs in a session of its own and is killed by :meth:`stop`.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import epics

from bgrscrpt_ioc.epics_base import base_ioc_environment
from bgrscrpt_ioc.epics_base import free_loopback_port as free_tcp_port
from tests.integration.harness import wait_for

ROOT = Path(__file__).resolve().parents[2]
SIM_DB = ROOT / "db_templates" / "sim_device.db"
PROCSERV = "/usr/bin/procServ"


def base_ioc_env(port: int) -> dict[str, str]:
    """An EPICS base IOC alone on ``port`` (CA) and on loopback only (CA and PVA)."""
    return base_ioc_environment(os.environ, port)


def sim_command(prefix: str, devices: list[str], **macros: str) -> list[str]:
    """``python -m epicscorelibs.ioc`` loading one sim_device.db per device.

    sys.executable is absolute, as procServ 2.7 needs.
    """
    args = [sys.executable, "-m", "epicscorelibs.ioc"]
    extra = "".join(f",{k}={v}" for k, v in macros.items())
    for dev in devices:
        args += ["-m", f"P={prefix},DEV={dev}{extra}", "-d", str(SIM_DB)]
    return args


class SimDevice:
    """A simulated device IOC, optionally under procServ (``control``: its endpoint)."""

    def __init__(
        self,
        workdir: Path,
        *,
        prefix: str,
        port: int,
        name: str = "SIM_01",
        devices: list[str] | None = None,
        procserv: bool = True,
        autorestart: bool = True,
        unix_socket: bool = False,
        **macros: str,
    ):
        self.prefix = prefix
        self.port = port
        self.name = name
        self.devices = devices or ["DEV"]
        self.workdir = workdir
        self.use_procserv = procserv
        self.autorestart = autorestart
        if unix_socket:
            self.control = f"unix:{workdir / f'{name}.sock'}"
        else:
            self.control = f"127.0.0.1:{free_tcp_port()}"
        self.macros = {"SCAN": "Passive", **macros}
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{name}-{port}.out"

    def pv(self, device: str | None = None, field: str = "VALUE") -> str:
        return f"{self.prefix}{device or self.devices[0]}:{field}"

    def command(self) -> list[str]:
        command = sim_command(self.prefix, self.devices, **self.macros)
        if self.use_procserv:
            command = [
                PROCSERV,
                "--foreground",
                "--quiet",
                "--holdoff", "2",
                "--name", self.name,
                *([] if self.autorestart else ["--noautorestart"]),
                "--port", self.control,
                *command,
            ]  # fmt: skip
        return command

    def environment(self) -> dict[str, str]:
        return base_ioc_env(self.port)

    def start(self) -> SimDevice:
        self._out = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            stdin=subprocess.PIPE if not self.use_procserv else subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        self.wait_serving()
        return self

    def caget(self, pv: str, **kw: Any) -> Any:
        """A fresh read of ``pv`` by a CA client that can reach this device."""
        return epics.caget(pv, use_monitor=False, **kw)

    def caput(self, pv: str, value: Any) -> Any:
        return epics.caput(pv, value, wait=True, timeout=5.0)

    def wait_serving(self, timeout: float = 30.0) -> None:
        def serving() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited: {self.log_path.read_text()}")
            return self.caget(self.pv(), timeout=0.5) is not None

        wait_for(serving, timeout, f"{self.name} to serve {self.pv()}")

    def severity(self, device: str | None = None) -> int | None:
        return self.caget(self.pv(device, "VALUE.SEVR"), timeout=1.0)

    def fault(self, device: str | None = None) -> None:
        assert self.caput(self.pv(device, "FAULT"), 1) == 1

    def child_pid(self) -> int:
        """The PID of procServ's child, from procServ's own greeting."""
        return int(self._greeting_field(r'@@@ Child "[^"]*" PID: (\d+)'))

    def autorestart_mode(self) -> str:
        return self._greeting_field(r"auto restart (?:mode )?is (\w+)")

    def _greeting_field(self, pattern: str) -> str:
        text = self.greeting()
        match = re.search(pattern, text)
        assert match, f"no {pattern!r} in procServ's greeting:\n{text}"
        return match.group(1)

    def greeting(self) -> str:
        if self.control.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(self.control[5:])
        else:
            host, port = self.control.rsplit(":", 1)
            sock = socket.create_connection((host, int(port)), timeout=5.0)
        with sock:
            sock.settimeout(5.0)
            data = b""
            while b"connected (plus you)" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
        return data.decode(errors="replace")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # procServ stops its child on SIGTERM; the bare IOC shrugs SIGTERM off.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM if self.use_procserv else signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # A child procServ started lives in its own session: make sure it went too.
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and _session_alive(self.proc.pid):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._out.close()


def _session_alive(sid: int) -> bool:
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[3]) == sid:  # field 6: session id
            return True
    return False
