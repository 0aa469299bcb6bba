"""The demo instrument's blocks and DAE, served by caproto.

``python -m demo.sim --prefix IN:DEMO: [--run-period 180]`` serves

- ``CS:SB:Temp_SP`` (K, writable): the setpoint; every few minutes the
  "user" moves it to the next value of a short temperature scan;
- ``CS:SB:Temp_Sample`` (K): drifts towards the setpoint with a time constant
  of a minute, plus noise; ``CS:SB:Temp_Stick`` lags behind it;
- ``CS:SB:Field`` (mT, near zero, noisy) and ``CS:SB:Pressure`` (mbar);
- ``DAE:RUNSTATE`` (the ISIS DAE's states) and ``DAE:RUNNUMBER`` (a string,
  as the DAE serves it): a new run every ``--run-period`` seconds;
- what IBEX's gateway and block server add (``demo.block_gateway``): each block
  in capitals too, its run control, and ``CS:BLOCKSERVER:BLOCKNAMES``.

The CA port is ``EPICS_CA_SERVER_PORT``; it serves on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time

from caproto import ChannelType
from caproto.server import PVGroup, pvproperty, run

from demo import block_gateway

RUN_STATES = [
    "PROCESSING", "SETUP", "RUNNING", "PAUSED", "WAITING", "VETOING", "ENDING", "SAVING",
    "RESUMING", "PAUSING", "BEGINNING", "ABORTING", "UPDATING", "STORING", "CHANGING",
]  # fmt: skip
SCAN = [10.0, 50.0, 100.0, 25.0]  # K: the setpoints the demo's user works through
TICK = 0.5  # s between updates
TAU = 60.0  # s: how fast the sample follows the setpoint
# Between runs the DAE goes through these states, each for this long (s).
END_OF_RUN = [("ENDING", 2.0), ("SETUP", 4.0), ("BEGINNING", 1.0)]


BLOCKS = ["Temp_SP", "Temp_Sample", "Temp_Stick", "Field", "Pressure"]


def _block(name: str, value: float, units: str, precision: int, **kw) -> pvproperty:
    # Each block its own alarm_group (block_gateway.block): caproto otherwise shares
    # one alarm per group.
    return block_gateway.block(name, value, precision=precision, units=units, **kw)


class Instrument(PVGroup):
    # As IBEX's gateway and block server serve them, so genie's cget finds the blocks.
    locals().update(block_gateway.runcontrol(BLOCKS))
    blocknames = block_gateway.block_names(BLOCKS)
    temp_sp = _block("Temp_SP", SCAN[0], "K", 2)
    temp_sample = _block("Temp_Sample", SCAN[0], "K", 3, read_only=True)
    temp_stick = _block("Temp_Stick", SCAN[0], "K", 3, read_only=True)
    field = _block("Field", 0.0, "mT", 4, read_only=True)
    pressure = _block("Pressure", 1e-6, "mbar", 8, read_only=True)
    runstate = pvproperty(
        name="DAE:RUNSTATE", value="RUNNING", dtype=ChannelType.ENUM, enum_strings=RUN_STATES,
        read_only=True, alarm_group="runstate",
    )  # fmt: skip
    runnumber = pvproperty(
        name="DAE:RUNNUMBER", value="00001000", dtype=ChannelType.STRING, read_only=True,
        alarm_group="runnumber",
    )  # fmt: skip

    def __init__(self, prefix: str, run_period: float, sp_period: float, first_run: int):
        super().__init__(prefix)
        self.first_run = first_run
        self.run_period = run_period
        self.sp_period = sp_period

    # caproto's pattern: a putter or startup hook takes its pvproperty's name (the
    # decorator returns the property), which mypy reads as a redefinition.
    @temp_sample.startup  # type: ignore[no-redef]
    async def temp_sample(self, instance, async_lib):
        await asyncio.gather(self._temperatures(), self._dae())

    async def _temperatures(self) -> None:
        sample = stick = SCAN[0]
        step = 0
        next_sp = time.monotonic() + self.sp_period
        while True:
            await asyncio.sleep(TICK)
            if time.monotonic() >= next_sp:
                step += 1
                next_sp += self.sp_period
                await self.temp_sp.write(SCAN[step % len(SCAN)])
            setpoint = float(self.temp_sp.value)
            sample += (setpoint - sample) * (1 - math.exp(-TICK / TAU)) + random.gauss(0, 0.03)
            stick += (sample - stick) * (1 - math.exp(-TICK / (2 * TAU)))
            await self.temp_sample.write(sample, verify_value=False)
            await self.temp_stick.write(stick, verify_value=False)
            await self.field.write(random.gauss(0, 0.002), verify_value=False)
            await self.pressure.write(abs(random.gauss(1e-6, 5e-8)), verify_value=False)

    async def _dae(self) -> None:
        number = self.first_run
        await self.runnumber.write(f"{number:08d}", verify_value=False)
        while True:
            await asyncio.sleep(self.run_period)
            for state, seconds in END_OF_RUN:
                await self.runstate.write(state, verify_value=False)
                await asyncio.sleep(seconds)
            number += 1
            await self.runnumber.write(f"{number:08d}", verify_value=False)
            await self.runstate.write("RUNNING", verify_value=False)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m demo.sim", description=__doc__)
    p.add_argument("--prefix", default="IN:DEMO:")
    p.add_argument("--run-period", type=float, default=180.0, help="seconds per run")
    p.add_argument("--sp-period", type=float, default=240.0, help="seconds per setpoint")
    # A run number of its own for every start (from the clock), so a plot's autosave
    # from an earlier demo is never taken for this run's data.
    p.add_argument(
        "--first-run", type=int, default=int(time.time() // 60) % 10_000_000, help="run number"
    )
    args = p.parse_args(argv)
    group = Instrument(args.prefix, args.run_period, args.sp_period, args.first_run)
    pvdb = dict(group.pvdb)
    block_gateway.alias_blocks(pvdb, args.prefix, BLOCKS, setpoints=["Temp_SP"])
    print(f"serving {len(pvdb)} PVs under {args.prefix}", flush=True)
    run(pvdb, interfaces=["127.0.0.1"], log_pv_names=False)


if __name__ == "__main__":
    main()
