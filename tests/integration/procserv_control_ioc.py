"""A small procServControl-compatible IOC for the tests: ``$(P)CS:PS:<IOC>:RESTART``
and ``:STATUS`` (bi Shutdown/Running), as IBEX's procServControl serves them.

It owns one real target IOC (the command after ``--``) and restarts it on a put
to RESTART: STATUS goes Shutdown, the target is killed and started again, and
STATUS goes back to Running once the new process runs.

    python procserv_control_ioc.py PREFIX IOC_NAME PORT -- command args...

The target gets the environment as given (set its port with EPICS_CAS_SERVER_PORT,
which an EPICS base IOC takes first); this IOC serves on PORT.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from caproto import ChannelType
from caproto.asyncio.server import run
from caproto.server import PVGroup, pvproperty


class ProcServControl(PVGroup):
    status = pvproperty(
        name="STATUS",
        dtype=ChannelType.ENUM,
        enum_strings=("Shutdown", "Running"),
        value="Shutdown",
        read_only=True,
        record="bi",
    )
    restart = pvproperty(name="RESTART", dtype=int, value=0, record="longout")
    restarts = pvproperty(name="RESTARTS", dtype=int, value=0, read_only=True)
    pid = pvproperty(name="PID", dtype=int, value=0, read_only=True)

    def __init__(self, prefix: str, command: list[str]):
        super().__init__(prefix)
        self.command = command
        self.proc: asyncio.subprocess.Process | None = None

    async def launch(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.command,
            stdin=asyncio.subprocess.PIPE,  # the IOC shell waits on it: keep it open
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await self.pid.write(self.proc.pid)
        await self.status.write("Running")

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    # caproto's pattern: a putter or startup hook takes its pvproperty's name (the
    # decorator returns the property), which mypy reads as a redefinition.
    @status.startup  # type: ignore[no-redef]
    async def status(self, instance, async_lib):
        await self.launch()

    @restart.putter  # type: ignore[no-redef]
    async def restart(self, instance, value):
        if value:
            await self.status.write("Shutdown")
            await self.kill()
            await asyncio.sleep(0.3)  # procServControl polls; let the down state be seen
            await self.launch()
            await self.restarts.write(self.restarts.value + 1)
        return 0


def main() -> None:
    prefix, ioc, port = sys.argv[1], sys.argv[2], sys.argv[3]
    os.environ["EPICS_CA_SERVER_PORT"] = port
    command = sys.argv[sys.argv.index("--") + 1 :]
    group = ProcServControl(f"{prefix}CS:PS:{ioc}:", command)

    def stop(*_):
        if group.proc is not None and group.proc.returncode is None:
            os.kill(group.proc.pid, signal.SIGKILL)
        os._exit(0)

    signal.signal(signal.SIGTERM, stop)
    # DISP (and PROC, TPRO) read 0 as on an EPICS IOC: caproto serves them empty, and
    # genie_python reads DISP before every put (demo.block_gateway.zero_byte_fields).
    for channel in group.pvdb.values():
        for field in getattr(channel, "fields", {}).values():
            if field.data_type == ChannelType.CHAR and field.value == b"":
                field._data["value"] = b"\0"
    run(group.pvdb, interfaces=["127.0.0.1"])


if __name__ == "__main__":
    main()
