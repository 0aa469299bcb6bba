"""caproto's server with this IOC's fixes, against libca (pyepics) as the client.

The fixes answer a put before building its monitor updates, and carry out a
command in the TCP handler when the circuit's command task is idle. Neither may
lose an update, reorder commands, or change what a client reads back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import uuid

from caproto.asyncio.server import start_server
from caproto.server import PVGroup, pvproperty

from bgrscrpt_ioc.ca import caproto_fixes
from tests.conftest import _free_port
from tests.unit.test_ca_pvs import _wait_listening


class Chained(PVGroup):
    """A put to A writes B in its putter and C from a task the putter starts."""

    a = pvproperty(value=0.0, name="A")
    b = pvproperty(value=0.0, name="B")
    c = pvproperty(value=0.0, name="C")

    @a.putter
    async def a(self, instance, value):
        await self.b.write(value * 2)
        # Runs after the put's own updates have gone out: its update must too.
        self._task = asyncio.get_running_loop().create_task(self.c.write(value * 3))
        return value


CLIENT = r"""
import json, sys, time, epics
prefix = sys.argv[1]
seen = {k: [] for k in "ABC"}
pvs = {k: epics.PV(prefix + k, callback=lambda value, k=k, **kw: seen[k].append(value))
       for k in "ABC"}
for pv in pvs.values():
    assert pv.wait_for_connection(10), pv.pvname
deadline = time.monotonic() + 10
while time.monotonic() < deadline and not all(seen.values()):
    time.sleep(0.01)
out = {"put": epics.caput(prefix + "A", 1.5, wait=True, timeout=10)}
out["read_back"] = epics.caget(prefix + "A", use_monitor=False)
# A burst of puts without waiting: libca packs them into few TCP segments.
for i in range(200):
    epics.caput(prefix + "B", float(i), wait=False)
out["last_put_read"] = epics.caget(prefix + "B", use_monitor=False, timeout=10)
deadline = time.monotonic() + 10
while time.monotonic() < deadline and (
    4.5 not in seen["C"] or 3.0 not in seen["B"] or seen["B"][-1] != 199.0
):
    time.sleep(0.01)
out["seen"] = seen
print(json.dumps(out))
"""


async def test_every_update_of_a_put_arrives_and_commands_keep_their_order(monkeypatch):
    caproto_fixes.install()
    port = _free_port()
    beacon_sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    beacon_sink.bind(("127.0.0.1", 0))
    ca_env = {
        "EPICS_CA_SERVER_PORT": str(port),
        "EPICS_CAS_SERVER_PORT": str(port),
        "EPICS_CA_ADDR_LIST": f"127.0.0.1:{port}",
        "EPICS_CA_AUTO_ADDR_LIST": "NO",
        "EPICS_CAS_INTF_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_AUTO_BEACON_ADDR_LIST": "NO",
        "EPICS_CAS_BEACON_ADDR_LIST": "127.0.0.1",
        "EPICS_CAS_BEACON_PORT": str(beacon_sink.getsockname()[1]),
    }
    for key, value in ca_env.items():
        monkeypatch.setenv(key, value)
    prefix = f"UF{uuid.uuid4().hex[:8]}:"
    group = Chained(prefix)
    server = asyncio.create_task(start_server(group.pvdb, interfaces=["127.0.0.1"]))
    client = None
    try:
        await _wait_listening(port, server)
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CLIENT,
            prefix,
            env={**os.environ, **ca_env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(client.communicate(), timeout=60)
        assert client.returncode == 0, err.decode()
        result = json.loads(out.decode().strip().splitlines()[-1])
        assert not server.done()
    finally:
        if client is not None and client.returncode is None:
            client.kill()
            await client.wait()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        beacon_sink.close()

    assert result["put"] == 1
    assert result["read_back"] == 1.5  # stored before the reply
    assert result["last_put_read"] == 199.0  # the burst was carried out in order
    seen = result["seen"]
    assert seen["A"] == [0.0, 1.5]
    assert seen["C"] == [0.0, 4.5]  # written by a task after the put: not lost
    # B: its initial value, the putter's write, then the burst in order; libca may
    # drop intermediate updates of a fast series but never reorders them.
    assert seen["B"][:2] == [0.0, 3.0]
    burst = seen["B"][2:]
    assert burst == sorted(burst) and burst[-1] == 199.0
