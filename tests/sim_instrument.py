"""A simulated IBEX instrument served by caproto: blocks, and the DAE's run state and number.

``python -m tests.sim_instrument --prefix P --blocks A,B [--moving]`` serves

- ``P CS:SB:<block>`` (double, writable); with ``--moving`` each block follows
  its own sine wave (``--period`` seconds), updated at 10 Hz, so a plot keeps moving;
- ``P CS:SB:<block>:SIM:SEVR`` (0..3): the alarm severity the block carries;
- ``P DAE:RUNSTATE`` (enum: SETUP, RUNNING, PAUSED, ...) and ``P DAE:RUNNUMBER``
  (string, as the ISIS DAE serves it).

It prints ``ready`` once it serves. Tests run it as a subprocess on a port of
their own (``EPICS_CA_SERVER_PORT``), so it can be killed and restarted: a
block that disappears and comes back.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time

from caproto import AlarmSeverity, AlarmStatus, ChannelType
from caproto.server import PVGroup, pvproperty, run

RUN_STATES = ["PROCESSING", "SETUP", "RUNNING", "PAUSED", "WAITING", "VETOING", "ENDING"]


def block_value(index: int, t: float, period: float = 6.0) -> float:
    """What block ``index`` reads at wall time ``t`` when moving: its own sine wave."""
    phase = (t / period + index / 3.0) % 1.0
    return 10.0 * (index + 1) + 5.0 * math.sin(2 * math.pi * phase)


def build(prefix: str, blocks: list[str], moving: bool, period: float = 6.0) -> PVGroup:
    body: dict = {}
    for index, block in enumerate(blocks):
        # Each block carries its own alarm (a PVGroup's PVs share one by default).
        body[f"b{index}"] = pvproperty(
            name=f"CS:SB:{block}", value=0.0, precision=3, units="K", alarm_group=block
        )
        body[f"s{index}"] = pvproperty(
            name=f"CS:SB:{block}:SIM:SEVR", value=0, alarm_group=f"{block}:SIM"
        )
    body["runstate"] = pvproperty(
        name="DAE:RUNSTATE", value="SETUP", dtype=ChannelType.ENUM, enum_strings=RUN_STATES
    )
    body["runnumber"] = pvproperty(name="DAE:RUNNUMBER", value="00001000", dtype=ChannelType.STRING)

    async def _severity(group, instance, value, index):
        await getattr(group, f"b{index}").write(
            getattr(group, f"b{index}").value,
            severity=AlarmSeverity(int(value)),
            status=AlarmStatus.NO_ALARM if int(value) == 0 else AlarmStatus.HIHI,
            verify_value=False,  # else caproto's limit check overrides the severity
        )
        return value

    for index in range(len(blocks)):

        async def putter(group, instance, value, index=index):
            return await _severity(group, instance, value, index)

        body[f"s{index}"].putter(putter)

    if moving:

        async def startup(group, instance, async_lib):
            while True:
                now = time.time()
                for index in range(len(blocks)):
                    prop = getattr(group, f"b{index}")
                    await prop.write(
                        block_value(index, now, period),
                        severity=prop.alarm.severity,
                        status=prop.alarm.status,
                        verify_value=False,
                    )
                await asyncio.sleep(0.1)

        body["b0"].startup(startup)

    group_class = type("SimInstrument", (PVGroup,), body)
    return group_class(prefix=prefix)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--blocks", default="")
    parser.add_argument("--moving", action="store_true")
    parser.add_argument("--period", type=float, default=6.0, help="seconds per wave")
    parser.add_argument("--no-dae", action="store_true", help="serve blocks only")
    args = parser.parse_args(argv)
    blocks = [b for b in args.blocks.split(",") if b]
    group = build(args.prefix, blocks, args.moving, args.period)
    pvdb = group.pvdb
    if args.no_dae:
        pvdb = {k: v for k, v in pvdb.items() if ":DAE:" not in f":{k[len(args.prefix) :]}"}

    async def announce(_):
        print("ready", flush=True)

    run(pvdb, interfaces=["127.0.0.1"], log_pv_names=False, startup_hook=announce)


if __name__ == "__main__":
    sys.exit(main())


class Simulation:
    """The simulated instrument as a subprocess on its own CA port (for tests)."""

    def __init__(
        self, prefix: str, port: int, blocks: list[str], *, moving=True, dae=True, period=6.0
    ):
        self.period = period
        self.prefix = prefix
        self.port = port
        self.blocks = blocks
        self.moving = moving
        self.dae = dae
        self.proc = None

    def start(self, timeout: float = 20.0) -> Simulation:
        import os
        import selectors
        import subprocess
        from pathlib import Path

        command = [sys.executable, "-m", "tests.sim_instrument", "--prefix", self.prefix]
        command += ["--blocks", ",".join(self.blocks)]
        command += ["--moving"] if self.moving else []
        command += [] if self.dae else ["--no-dae"]
        command += ["--period", str(self.period)]
        env = dict(os.environ, EPICS_CA_SERVER_PORT=str(self.port))
        env["EPICS_CAS_SERVER_PORT"] = str(self.port)
        self.proc = subprocess.Popen(
            command,
            env=env,
            cwd=Path(__file__).resolve().parent.parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.proc.stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(max(0.0, deadline - time.monotonic())):
                    line = self.proc.stdout.readline()
                    if line.strip() == b"ready":
                        return self
                    if not line:
                        break
        self.stop()
        raise AssertionError(f"the simulated instrument did not start on port {self.port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except Exception:
                self.proc.kill()
                self.proc.wait()
        if self.proc is not None and self.proc.stdout is not None:
            self.proc.stdout.close()

    def pv(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"
