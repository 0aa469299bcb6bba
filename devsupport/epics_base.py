"""EPICS base IOCs (``python -m epicscorelibs.ioc``) next to the IOC under test.

The tests, the bench and the demo all start EPICS base IOCs on one machine, and
each must stay alone on its own loopback ports: base takes
``EPICS_CAS_SERVER_PORT`` before ``EPICS_CA_SERVER_PORT`` (an inherited value
would put two servers on one port), and its pvAccess server (QSRV) would
otherwise listen on every interface on the default pvAccess ports.

Two kinds are started here: :class:`SimDevice`, the target a watch monitors and
restarts (``db_templates/sim_device.db``, under Debian's procServ or on its own),
and :class:`BaseIoc`, the same records as this IOC's from ``db_templates`` (the
peer the bench measures against). Every process inherits the caller's
environment (so a test's or a run's tag), and :mod:`epics` is imported only when
a PV is read, after the caller has set up Channel Access.
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
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from devsupport.ports import free_ca_port, free_loopback_port
from devsupport.processes import session_alive
from devsupport.waiting import wait_for

REPO = Path(__file__).resolve().parent.parent
DB_TEMPLATES = REPO / "db_templates"
SIM_DB = DB_TEMPLATES / "sim_device.db"
PROCSERV = "/usr/bin/procServ"
STARTUP_TIMEOUT = 30.0


def _caget(pvname: str, timeout: float, **kw: Any) -> Any:
    import epics  # here: libca reads its address list once, when first used

    return epics.caget(pvname, timeout=timeout, use_monitor=False, **kw)


CONNECT_TIMEOUT = 30.0
"""How long a put waits for its channel: one the device had before it was restarted is
found again only when libca's search for it comes round, which backs off to many
seconds while the device is away (no caRepeater here to pass on its beacons)."""


def _caput(pvname: str, value: Any, timeout: float) -> Any:
    import epics

    return epics.caput(
        pvname, value, wait=True, timeout=timeout, connection_timeout=CONNECT_TIMEOUT
    )


def base_ioc_environment(
    env: Mapping[str, str], ca_port: int, pva_port: int | None = None
) -> dict[str, str]:
    """``env`` for an EPICS base IOC serving Channel Access on ``ca_port`` and
    pvAccess on ``pva_port`` (a free one when None), both on 127.0.0.1 only."""
    pva = str(pva_port if pva_port is not None else free_loopback_port())
    return {
        **env,
        "EPICS_CA_SERVER_PORT": str(ca_port),
        "EPICS_CAS_SERVER_PORT": str(ca_port),
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_PVA_AUTO_ADDR_LIST": "NO",
        "EPICS_PVA_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_PVAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_PVAS_SERVER_PORT": pva,
        "EPICS_PVAS_BROADCAST_PORT": pva,
        "EPICS_PVA_BROADCAST_PORT": pva,
    }


def base_ioc_env(port: int) -> dict[str, str]:
    """This process's environment for an EPICS base IOC alone on ``port`` (CA) and on
    loopback only (CA and PVA)."""
    return base_ioc_environment(os.environ, port)


def procserv_greeting(control: str, key: bytes = b"") -> str:
    """What procServ tells a console connecting to ``control`` (``host:port`` or
    ``unix:path``): the child's PID and modes.

    ``key``, typed once the greeting is complete (procServ ignores what arrives
    before), and procServ's first answer to it.
    """
    if control.startswith("unix:"):
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(control[5:])
    else:
        host, port = control.rsplit(":", 1)
        sock = socket.create_connection((host, int(port)), timeout=5.0)
    with sock:
        sock.settimeout(5.0)
        data = b""
        while b"connected (plus you)" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        if key:
            sock.sendall(key)
            data += sock.recv(4096)
    return data.decode(errors="replace")


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
        holdoff: float = 2,
        **macros: str,
    ):
        self.prefix = prefix
        self.port = port
        self.name = name
        self.devices = devices or ["DEV"]
        self.workdir = workdir
        self.use_procserv = procserv
        self.autorestart = autorestart
        self.holdoff = holdoff  # procServ's wait before it restarts the IOC
        if unix_socket:
            self.control = f"unix:{workdir / f'{name}.sock'}"
        else:
            # Outside the kernel's ephemeral range, like every server port here: with
            # an ephemeral one the bench's fault put lost its reply at the restart.
            self.control = f"127.0.0.1:{free_ca_port()}"
        self.macros = {"SCAN": "Passive", **macros}
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{name}-{port}.out"

    def pv(self, device: str | None = None, field: str = "VALUE") -> str:
        return f"{self.prefix}{device or self.devices[0]}:{field}"

    @property
    def control_port(self) -> int:
        """procServ's control port on 127.0.0.1 (not with ``unix_socket``)."""
        host, _, port = self.control.rpartition(":")
        assert host == "127.0.0.1", self.control
        return int(port)

    def command(self) -> list[str]:
        """The IOC's command line (procServ's, with the IOC's after it, under procServ)."""
        command = sim_command(self.prefix, self.devices, **self.macros)
        if self.use_procserv:
            command = [
                PROCSERV,
                "--foreground",
                "--quiet",
                "--holdoff", f"{self.holdoff:g}",
                "--name", self.name,
                *([] if self.autorestart else ["--noautorestart"]),
                "--port", self.control,
                *command,
            ]  # fmt: skip
        return command

    def environment(self) -> dict[str, str]:
        return base_ioc_env(self.port)

    def start(self) -> Self:
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

    def caget(self, pv: str, timeout: float) -> Any:
        """A fresh read of ``pv`` by a CA client that can reach this device (a
        subclass on another host reads through a client there)."""
        return _caget(pv, timeout=timeout)

    def caput(self, pv: str, value: Any) -> Any:
        return _caput(pv, value, timeout=5.0)

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
        return procserv_greeting(self.control)

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
        while time.monotonic() < deadline and session_alive(self.proc.pid):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self._out.close()


class BaseIoc:
    """``python -m epicscorelibs.ioc`` serving the same records from db_templates.

    It reads an interactive shell from stdin (so stdin stays an open pipe) and
    ignores SIGTERM: it is asked to exit on stdin, then SIGKILLed.
    """

    def __init__(self, workdir: Path, *, port: int, prefix: str, slots: int = 2):
        self.workdir = workdir
        self.port = port
        self.prefix = prefix
        self.slots = slots
        self.out_path = workdir / "base-ioc.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def pv(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def command(self) -> list[str]:
        args = [sys.executable, "-m", "epicscorelibs.ioc"]
        for i in range(1, self.slots + 1):
            args += [
                "-m",
                f"P={self.prefix},SLOT=BGRSCRPT_{i:02d}",
                "-d",
                str(DB_TEMPLATES / "bgrscrpt.db"),
            ]
        args += ["-m", f"P={self.prefix}", "-d", str(DB_TEMPLATES / "bgrscrpt_ioc.db")]
        return args

    def start(self) -> Self:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = base_ioc_environment(os.environ, self.port, free_ca_port())
        self._out = open(self.out_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            env=env,
            cwd=self.workdir,
            stdin=subprocess.PIPE,
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                text = self.out_path.read_text(errors="replace")
                raise AssertionError(f"base IOC exited with {self.proc.returncode}:\n{text}")
            return _caget(self.pv("BGRSCRPT:VERSION"), timeout=0.5) is not None

        wait_for(up, STARTUP_TIMEOUT, f"the EPICS base IOC on port {self.port}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.write(b"exit()\n")
                self.proc.stdin.close()
            try:
                self.proc.wait(2.0)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        elif self.proc.stdin is not None:
            self.proc.stdin.close()
        self._out.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
