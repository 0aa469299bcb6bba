"""A simulated IBEX instrument served by caproto: blocks, and the DAE's run state and number.

``python -m tests.sim_instrument --prefix P --blocks A,B [--moving]`` serves

- ``P CS:SB:<block>`` (double ``ai``, writable, K; also as ``...:SP``, a block pointing
  at a setpoint); with ``--moving`` each block follows
  its own sine wave (``--period`` seconds), updated at 10 Hz, so a plot keeps moving;
- ``P CS:SB:<block>:SIM:SEVR`` (0..3): the alarm severity the block carries;
- ``--enum-blocks Z``: ``P CS:SB:Z``, an enum block (``OK``, ``FAULT``) with its ``:SIM:SEVR``;
- as IBEX's gateway and block server do (:mod:`demo.block_gateway`): every block
  also in capitals, its run control ``:RC:ENABLE|LOW|HIGH``, and
  ``P CS:BLOCKSERVER:BLOCKNAMES`` listing the blocks and the ``--ghosts`` (blocks
  of the configuration that no IOC serves);
- ``P DAE:RUNSTATE`` (enum: SETUP, RUNNING, PAUSED, ...) and ``P DAE:RUNNUMBER``
  (string, as the ISIS DAE serves it), ``P ED:RBNUMBER``, ``P DAE:TITLE``,
  ``P DAE:PERIOD``, ``P DAE:GOODFRAMES``, ``P DAE:GOODUAH``, ``P DAE:STATETRANS``;
- ``--extras``: PVs of every CA type under ``P SIM:`` (``LONG``, ``FLOAT``,
  ``STRING``, ``TEXT``, ``ARRAY``, ``ENUM``, ``RO``), for comparing clients;
- ``--instlist``: ``CS:INSTLIST`` (no prefix), IBEX's list of instruments, naming
  this one, so that genie_python's ``set_instrument`` need not wait for it.

It prints ``ready`` once it serves. Tests run it as a subprocess on a port of
their own (``EPICS_CA_SERVER_PORT``), so it can be killed and restarted: a
block that disappears and comes back.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from typing import TYPE_CHECKING

from caproto import AlarmSeverity, AlarmStatus, ChannelType
from caproto.server import PVGroup, pvproperty, run

from demo import block_gateway as gw

if TYPE_CHECKING:
    import subprocess

RUN_STATES = ["PROCESSING", "SETUP", "RUNNING", "PAUSED", "WAITING", "VETOING", "ENDING"]
ENUM_BLOCK_STATES = ["OK", "FAULT"]


def block_value(index: int, t: float, period: float = 6.0) -> float:
    """What block ``index`` reads at wall time ``t`` when moving: its own sine wave."""
    phase = (t / period + index / 3.0) % 1.0
    return 10.0 * (index + 1) + 5.0 * math.sin(2 * math.pi * phase)


def _dae(body: dict) -> None:
    body["runstate"] = pvproperty(
        name="DAE:RUNSTATE", value="SETUP", dtype=ChannelType.ENUM, enum_strings=RUN_STATES,
        record="mbbi",
    )  # fmt: skip
    body["runnumber"] = pvproperty(name="DAE:RUNNUMBER", value="00001000", dtype=ChannelType.STRING)
    body["rbnumber"] = pvproperty(name="ED:RBNUMBER", value="1920001", dtype=ChannelType.STRING)
    body["title"] = pvproperty(name="DAE:TITLE", value="sim run", dtype=str, max_length=256)
    body["period"] = pvproperty(name="DAE:PERIOD", value=1, record="longin")
    body["goodframes"] = pvproperty(name="DAE:GOODFRAMES", value=1234, record="longin")
    body["gooduah"] = pvproperty(name="DAE:GOODUAH", value=12.5, record="ai")
    body["statetrans"] = pvproperty(
        name="DAE:STATETRANS", value="No", dtype=ChannelType.ENUM, enum_strings=["No", "Yes"]
    )


def _extras(body: dict) -> None:
    body["x_long"] = pvproperty(name="SIM:LONG", value=42, record="longout")
    body["x_float"] = pvproperty(name="SIM:FLOAT", value=0.1, dtype=ChannelType.FLOAT)
    body["x_string"] = pvproperty(name="SIM:STRING", value="hello", dtype=ChannelType.STRING)
    body["x_text"] = pvproperty(name="SIM:TEXT", value="a long text", dtype=str, max_length=100)
    body["x_array"] = pvproperty(
        name="SIM:ARRAY", value=[1.5, 2.5, 3.5], dtype=float, max_length=3, record="waveform"
    )
    body["x_enum"] = pvproperty(
        name="SIM:ENUM", value="Two", dtype=ChannelType.ENUM,
        enum_strings=["One", "Two", "Three"], record="mbbo",
    )  # fmt: skip
    body["x_ro"] = pvproperty(name="SIM:RO", value=7.25, read_only=True, record="ai")


def build(
    prefix: str,
    blocks: list[str],
    moving: bool,
    period: float = 6.0,
    *,
    enum_blocks: list[str] = (),  # type: ignore[assignment]
    ghosts: list[str] = (),  # type: ignore[assignment]
    extras: bool = False,
) -> PVGroup:
    body: dict = {}
    for index, name in enumerate(blocks):
        # Each block carries its own alarm (a PVGroup's PVs share one by default).
        body[f"b{index}"] = gw.block(name, 0.0, precision=3, units="K")
        body[f"s{index}"] = pvproperty(
            name=f"CS:SB:{name}:SIM:SEVR", value=0, alarm_group=f"{name}:SIM"
        )
    for index, name in enumerate(enum_blocks):
        body[f"e{index}"] = gw.block(
            name, ENUM_BLOCK_STATES[0], dtype=ChannelType.ENUM,
            enum_strings=ENUM_BLOCK_STATES, record="mbbi",
        )  # fmt: skip
        body[f"es{index}"] = pvproperty(
            name=f"CS:SB:{name}:SIM:SEVR", value=0, alarm_group=f"{name}:SIM"
        )
    all_blocks = [*blocks, *enum_blocks]
    body.update(gw.runcontrol(all_blocks))
    body["blocknames"] = gw.block_names([*all_blocks, *ghosts])
    _dae(body)
    if extras:
        _extras(body)

    async def _severity(group, attr, value):
        prop = getattr(group, attr)
        await prop.write(
            prop.value,
            severity=AlarmSeverity(int(value)),
            status=AlarmStatus.NO_ALARM if int(value) == 0 else AlarmStatus.HIHI,
            verify_value=False,  # else caproto's limit check overrides the severity
        )
        return value

    for sev, attr in [(f"s{i}", f"b{i}") for i in range(len(blocks))] + [
        (f"es{i}", f"e{i}") for i in range(len(enum_blocks))
    ]:

        async def putter(group, instance, value, attr=attr):
            return await _severity(group, attr, value)

        body[sev].putter(putter)

    if moving and blocks:

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


def instlist(prefix: str) -> PVGroup:
    """``CS:INSTLIST``: IBEX's list of instruments (compressed, hexed JSON), naming ours."""
    parts = prefix.rstrip(":").split(":")
    name = parts[-1]
    entry = {"name": name, "hostName": f"NDX{name}", "pvPrefix": prefix, "isScheduled": False}
    text = gw.compress_and_hex(json.dumps([entry])) + "\0"
    body = {"instlist": pvproperty(name="CS:INSTLIST", value=text, dtype=str, max_length=16000)}
    return type("InstList", (PVGroup,), body)(prefix="")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--blocks", default="")
    parser.add_argument("--enum-blocks", default="")
    parser.add_argument("--ghosts", default="", help="block names the block server lists, unserved")
    parser.add_argument("--moving", action="store_true")
    parser.add_argument("--period", type=float, default=6.0, help="seconds per wave")
    parser.add_argument("--no-dae", action="store_true", help="serve blocks only")
    parser.add_argument("--extras", action="store_true", help="PVs of every CA type under SIM:")
    parser.add_argument("--instlist", action="store_true", help="serve CS:INSTLIST too")
    args = parser.parse_args(argv)

    def names(text: str) -> list[str]:
        return [b for b in text.split(",") if b]

    blocks, enum_blocks = names(args.blocks), names(args.enum_blocks)
    group = build(
        args.prefix, blocks, args.moving, args.period,
        enum_blocks=enum_blocks, ghosts=names(args.ghosts), extras=args.extras,
    )  # fmt: skip
    pvdb = dict(group.pvdb)
    # The double blocks point at setpoints (cset writes them through :SP, at once).
    gw.alias_blocks(pvdb, args.prefix, [*blocks, *enum_blocks], setpoints=blocks)
    if args.no_dae:
        pvdb = {k: v for k, v in pvdb.items() if ":DAE:" not in f":{k[len(args.prefix) :]}"}
    if args.instlist:
        pvdb.update(instlist(args.prefix).pvdb)

    async def announce(_):
        print("ready", flush=True)

    run(pvdb, interfaces=["127.0.0.1"], log_pv_names=False, startup_hook=announce)


if __name__ == "__main__":
    main()


class Simulation:
    """The simulated instrument as a subprocess on its own CA port (for tests)."""

    def __init__(
        self,
        prefix: str,
        port: int,
        blocks: list[str],
        *,
        moving=True,
        dae=True,
        period=6.0,
        enum_blocks: list[str] = (),  # type: ignore[assignment]
        ghosts: list[str] = (),  # type: ignore[assignment]
        extras: bool = False,
        instlist: bool = False,
    ):
        self.enum_blocks = list(enum_blocks)
        self.ghosts = list(ghosts)
        self.extras = extras
        self.instlist = instlist
        self.period = period
        self.prefix = prefix
        self.port = port
        self.blocks = blocks
        self.moving = moving
        self.dae = dae
        self.proc: subprocess.Popen[bytes] | None = None

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
        if self.enum_blocks:
            command += ["--enum-blocks", ",".join(self.enum_blocks)]
        if self.ghosts:
            command += ["--ghosts", ",".join(self.ghosts)]
        command += ["--extras"] if self.extras else []
        command += ["--instlist"] if self.instlist else []
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
        stdout = self.proc.stdout
        assert stdout is not None  # piped
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while time.monotonic() < deadline:
                if selector.select(max(0.0, deadline - time.monotonic())):
                    line = stdout.readline()
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
