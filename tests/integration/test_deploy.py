"""Deployment: the IOC under procServ through deploy/procserv/run_bgrscrpt_ioc.sh,
restarted with procServ's ^X as an operator does on its console; and the example
systemd unit, checked by systemd itself.
"""

from __future__ import annotations

import configparser
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devsupport.epics_base import procserv_greeting
from devsupport.ports import free_ca_port as _free_port
from tests.integration.conftest import write_script
from tests.integration.harness import process_gone, wait_for

ROOT = Path(__file__).resolve().parents[2]
LAUNCH = ROOT / "deploy" / "procserv" / "run_bgrscrpt_ioc.sh"
UNIT = ROOT / "deploy" / "systemd" / "bgrscrpt-ioc.service"
CTRL_X = b"\x18"

QUIET_SCRIPT = """
import time
while True:
    time.sleep(0.2)
"""

needs_procserv = pytest.mark.skipif(shutil.which("procServ") is None, reason="no procServ")


def blocked_signals(pid: int) -> int:
    """The signal mask of a process, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigBlk:"):
            return int(line.split()[1], 16)
    raise AssertionError(f"no SigBlk for {pid}")


def poll(condition, timeout: float, what: str, interval: float = 0.5):
    """wait_for at a pace procServ's console can take: each look is a new connection."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result or time.monotonic() > deadline:
            break
        time.sleep(interval)
    assert result, f"timed out after {timeout:g} s waiting for {what}"
    return result


class ProcServedIoc:
    def __init__(self, tmp_path: Path, prefix: str, ca_port: int, **env: str):
        self.prefix = prefix
        self.control = _free_port()
        self.log_dir = tmp_path / "logs"
        config = tmp_path / "config"
        config.mkdir()
        write_script(config, "background_script.py", QUIET_SCRIPT)
        self.env = {
            **os.environ,
            "EPICS_CA_SERVER_PORT": str(ca_port),
            "BGRSCRPT_PROCSERV_PORT": str(self.control),
            "BGRSCRPT_PROCSERV_HOLDOFF": "1",
            "BGRSCRPT_LOG_DIR": str(self.log_dir),
            **env,
        }
        self.args = ["--prefix", prefix, "--config-dir", str(config),
                     "--var-dir", str(tmp_path / "var"), "--slots", "1"]  # fmt: skip
        self.proc: subprocess.Popen | None = None

    def start(self) -> ProcServedIoc:
        self.out = open(self.log_dir.parent / "procserv.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(LAUNCH), "--foreground", *self.args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def greeting(self, key: bytes = b"") -> str:
        """What procServ tells a console on connecting (and its answer to ``key``)."""
        return procserv_greeting(f"127.0.0.1:{self.control}", key)

    def child_pid(self) -> int | None:
        match = re.search(r'@@@ Child "[^"]*" PID: (\d+)', self.greeting())
        return int(match.group(1)) if match else None

    def send(self, key: bytes) -> None:
        self.greeting(key)

    def get(self, suffix: str) -> str | None:
        """The PV's value as text, or None: read by EPICS base's caget, a fresh client each
        time. A long-lived libca client backs its searches off once the IOC went away
        (with no CA repeater to pass on the new IOC's beacons), and may take longer to
        find the IOC again than the test waits."""
        out = subprocess.run(
            [str(Path(sys.executable).parent / "caget"), "-t", "-w", "1", self.prefix + suffix],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        text = out.stdout.strip()
        # The wheel's caget wrapper exits 0 even when the channel never connected.
        return None if out.returncode != 0 or "connect timed out" in text else text

    def wait_serving(self) -> None:
        def up() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (
                self.log_dir.parent / "procserv.out"
            ).read_text()
            return self.get("BGRSCRPT_01:STATUS") == "RUNNING"

        wait_for(up, 40, "the IOC under procServ to run its script")

    def wait_control(self) -> None:
        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.control), timeout=1).close()
            except OSError:
                return False
            return True

        wait_for(listening, 20, "procServ's control port")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # procServ stops its child, then itself
            self.proc.wait(30)
        self.out.close()


@needs_procserv
@pytest.mark.timeout(180)
def test_procserv_runs_the_ioc_and_ctrl_x_restarts_it(tmp_path, prefix, port_pool, test_tag):
    ioc = ProcServedIoc(tmp_path, prefix, port_pool.take()).start()
    try:
        ioc.wait_control()
        ioc.wait_serving()
        first = ioc.child_pid()
        script = int(ioc.get("BGRSCRPT_01:PID") or 0)
        assert first and script
        assert "auto restart is ON" in ioc.greeting() or "auto restart mode is ON" in ioc.greeting()
        # procServ 2.7 blocks SIGTERM in its child; the launch script clears it, so
        # the IOC and its scripts can be stopped with SIGTERM.
        assert blocked_signals(first) == 0
        assert blocked_signals(script) == 0

        ioc.send(CTRL_X)
        # Watched over CA, not on the console: procServ starts the new child only
        # once its control port has been quiet for a moment.
        wait_for(lambda: process_gone(first), 30, "the old IOC to go")
        wait_for(lambda: process_gone(script), 10, "the old IOC's script to go")
        ioc.wait_serving()
        assert ioc.child_pid() not in (None, first)
        assert int(ioc.get("BGRSCRPT_01:PID") or 0) not in (0, script)
        assert int(ioc.get("BGRSCRPT:UPTIME") or 99) < 30

        # procServ's log: dated, named, holding the IOC's own output.
        logs = list(ioc.log_dir.glob("BGRSCRPT-*.log"))
        assert len(logs) == 1, logs
        assert "bgrscrpt" in logs[0].read_text(errors="replace").lower()
    finally:
        ioc.stop()


@needs_procserv
@pytest.mark.timeout(180)
def test_without_autorestart_ctrl_x_stops_and_starts(tmp_path, prefix, port_pool, test_tag):
    ioc = ProcServedIoc(
        tmp_path, prefix, port_pool.take(), BGRSCRPT_PROCSERV_AUTORESTART="no"
    ).start()
    try:
        ioc.wait_control()
        ioc.wait_serving()
        first = ioc.child_pid()
        ioc.send(CTRL_X)  # kills the child; with --noautorestart it stays down
        wait_for(lambda: process_gone(first), 30, "the IOC to stop")
        poll(lambda: ioc.child_pid() is None, 10, "procServ to show no child")
        assert ioc.get("BGRSCRPT:VERSION") is None
        ioc.send(CTRL_X)  # and starts it again
        ioc.wait_serving()
        assert ioc.child_pid() not in (None, first)
    finally:
        ioc.stop()


def test_launch_script_refuses_bad_settings(tmp_path):
    for env, problem in (
        ({"BGRSCRPT_PROCSERV_AUTORESTART": "maybe"}, "must be yes or no"),
        ({"BGRSCRPT_PROCSERV_PORT": "port"}, "must be a port number"),
        ({"PATH": str(tmp_path)}, "procServ is not installed"),
    ):
        result = subprocess.run(
            [shutil.which("bash") or "/bin/bash", str(LAUNCH), "--foreground"],
            env={**os.environ, "BGRSCRPT_LOG_DIR": str(tmp_path / "logs"), **env},
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        assert result.returncode == 2, (env, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and problem in lines[0], result.stderr


def test_systemd_unit(tmp_path):
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(UNIT)
    service = unit["Service"]
    assert service["Restart"] == "on-failure"
    assert service["KillMode"] == "control-group"
    assert service["KillSignal"] == "SIGTERM"
    assert service["Delegate"] == "yes"  # the IOC's cgroups per slot, below the unit's
    assert service["ExecStart"].split()[0].endswith("/bgrscrpt-ioc")
    verify = shutil.which("systemd-analyze")
    if verify is None:
        pytest.skip("systemd-analyze is not installed")
    # systemd's own check, with ExecStart pointing at this checkout's interpreter.
    text = UNIT.read_text().replace(
        "/opt/bgrscrpt_ioc/.venv/bin/bgrscrpt-ioc", f"{sys.executable} -m bgrscrpt_ioc"
    )
    copy = tmp_path / "bgrscrpt-ioc.service"
    copy.write_text(text)
    result = subprocess.run([verify, "verify", str(copy)], capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert result.returncode == 0 and result.stderr.strip() == "", result.stderr
