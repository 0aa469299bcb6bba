"""The ``via = "pv"`` restart path and the scripts' ``restart_ioc_when_pv_in_alarm``,
against a procServControl-compatible IOC that owns a real EPICS base IOC."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import epics
import pytest

from tests.integration.conftest import write_script
from tests.integration.harness import wait_for
from tests.integration.watch_targets import base_ioc_env, sim_command

HERE = Path(__file__).resolve().parent
T = 60.0


class ControlledSim:
    """procServControl-compatible IOC (on one port) owning a sim device IOC (on another)."""

    def __init__(self, tmp_path: Path, *, prefix: str, ioc: str, sim_prefix: str, dev: str,
                 control_port: int, sim_port: int):  # fmt: skip
        self.prefix, self.ioc = prefix, ioc
        self.value_pv = f"{sim_prefix}{dev}:VALUE"
        self.fault_pv = f"{sim_prefix}{dev}:FAULT"
        command = sim_command(sim_prefix, [dev], SCAN="Passive")
        env = base_ioc_env(sim_port)  # EPICS_CAS_SERVER_PORT: the target's port
        self.log = open(tmp_path / f"control-{control_port}.out", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "procserv_control_ioc.py"),
                prefix,
                ioc,
                str(control_port),
                "--",
                *command,
            ],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

        def running() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"the procServControl IOC exited: {self.proc.returncode}")
            return epics.caget(self.pv("STATUS"), as_string=True, timeout=0.5) == "Running"

        wait_for(running, T, "procServControl STATUS Running")
        wait_for(lambda: self.severity() is not None, T, "the sim device to serve")

    def pv(self, field: str) -> str:
        return f"{self.prefix}CS:PS:{self.ioc}:{field}"

    def restarts(self) -> int | None:
        return epics.caget(self.pv("RESTARTS"), timeout=1.0, use_monitor=False)

    def severity(self) -> int | None:
        return epics.caget(f"{self.value_pv}.SEVR", timeout=1.0, use_monitor=False)

    def fault(self) -> None:
        assert epics.caput(self.fault_pv, 1, wait=True, timeout=5.0) == 1

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture
def controlled(tmp_path, port_pool, prefix, test_tag):
    made: list[ControlledSim] = []

    def make(**kw) -> ControlledSim:
        sim = ControlledSim(
            tmp_path,
            prefix=prefix,
            control_port=port_pool.take(),
            sim_port=port_pool.take(),
            **kw,
        )
        made.append(sim)
        return sim

    yield make
    for sim in made:
        sim.stop()


def test_restart_via_procservcontrol_pvs(make_ioc, controlled, prefix):
    sim = controlled(ioc="SIM_01", sim_prefix=f"{prefix}D:", dev="DEV")
    settings = f"""
[[watch]]
name = "SIM"
pvs = ["{sim.value_pv}"]
delay = 0.2
restart = ["SIM_01"]
via = "pv"
verify_timeout = 30.0
"""
    ioc = make_ioc(settings).start()
    wait_for(
        lambda: ioc.get("BGRSCRPT:WATCH:SIM:ALARM", as_string=True) == "NO_ALARM", T, "ALARM OK"
    )
    sim.fault()
    wait_for(lambda: sim.restarts() == 1, T, "procServControl to be asked to restart")
    wait_for(
        lambda: (
            ioc.get("BGRSCRPT:WATCH:SIM:STATE", as_string=True) == "OK"
            and ioc.get("BGRSCRPT:WATCH:SIM:RESTART_CNT") == 1
        ),
        T,
        "the watch to see the recovery",
    )
    msg = ioc.get("BGRSCRPT:WATCH:SIM:MSG", as_string=True, count=1024)
    assert "restarted SIM_01, recovered in" in msg
    wait_for(lambda: sim.severity() == 0, T, "VALUE NO_ALARM again")


def test_pv_backend_without_procservcontrol_is_failed_with_a_clear_msg(
    make_ioc, controlled, prefix
):
    sim = controlled(ioc="SIM_01", sim_prefix=f"{prefix}D:", dev="DEV")
    settings = f"""
[[watch]]
name = "SIM"
pvs = ["{sim.value_pv}"]
delay = 0.0
restart = ["NOT_THERE"]
via = "pv"
backoff = 60.0
"""
    ioc = make_ioc(settings).start()
    sim.fault()
    wait_for(lambda: ioc.get("BGRSCRPT:WATCH:SIM:STATE", as_string=True) == "FAILED", T, "FAILED")
    msg = ioc.get("BGRSCRPT:WATCH:SIM:MSG", as_string=True, count=1024)
    assert f"{prefix}CS:PS:NOT_THERE:RESTART does not connect" in msg, msg
    assert "(no server answers its search)" in msg, msg


SCRIPT = """
import os, sys, time
sys.path.insert(0, os.path.join(os.environ["KIT_ROOT"], "ISIS", "inst_servers", "master"))
from server_common.helpers import register_ioc_start
from general.utilities.restart_ioc_when_pv_in_alarm import restart_ioc_when_pv_in_alarm

register_ioc_start("BGRSCRPT_01")
thread = restart_ioc_when_pv_in_alarm(
    {block!r}, ["SIM_01"], [1], wait_between_restarts=1, wait_for_polling=0.1
)
print("watching", thread.name, flush=True)
while thread.is_alive():
    time.sleep(0.2)
"""


def test_restart_ioc_when_pv_in_alarm_in_a_script(make_ioc, controlled, config_dir, prefix):
    # The block is $(P)CS:SB:SIM:LATCH: 0, or 1 once the device has a fault.
    sim = controlled(ioc="SIM_01", sim_prefix=f"{prefix}CS:SB:", dev="SIM")
    write_script(config_dir, "background_script.py", SCRIPT.format(block="SIM:LATCH"))
    ioc = make_ioc(slots=1).start()
    ioc.wait_status("RUNNING", timeout=T)
    wait_for(lambda: "watching" in (ioc.get("BGRSCRPT_01:LOG", as_string=True, count=5120) or ""),
             T, "the script to start watching")  # fmt: skip
    assert sim.restarts() == 0
    sim.fault()
    wait_for(lambda: (sim.restarts() or 0) >= 1, T, "the script to restart SIM_01")
    wait_for(lambda: sim.severity() == 0, T, "VALUE NO_ALARM after the restart")
    log = ioc.get("BGRSCRPT_01:LOG", as_string=True, count=5120)
    assert "Restarting SIM_01" in log


def test_restart_ioc_when_pv_in_alarm_says_when_the_block_is_missing(
    make_ioc, controlled, config_dir, prefix
):
    controlled(ioc="SIM_01", sim_prefix=f"{prefix}CS:SB:", dev="SIM")
    write_script(config_dir, "background_script.py", SCRIPT.format(block="NO_SUCH_BLOCK"))
    ioc = make_ioc(slots=1).start()

    def said() -> str:
        return ioc.get("BGRSCRPT_01:LOG", as_string=True, count=5120) or ""

    wait_for(lambda: "does not answer" in said(), T, "the missing block message")
    assert f"{prefix}CS:SB:NO_SUCH_BLOCK" in said()
    assert "does not answer" in said()
    assert ioc.status() == "RUNNING"  # the thread keeps watching; the script lives
