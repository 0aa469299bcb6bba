"""caproto's server with this IOC's fixes, against libca (pyepics) as the client.

The fixes answer a put before building its monitor updates, and carry out a
command in the TCP handler when the circuit's command task is idle. Neither may
lose an update, reorder commands, or change what a client reads back.
"""

from __future__ import annotations

import asyncio
import uuid

from caproto.server import PVGroup, pvproperty

from bgrscrpt_ioc.ca import caproto_fixes
from tests.unit.ca_server import run_client, serving


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
    prefix = f"UF{uuid.uuid4().hex[:8]}:"
    group = Chained(prefix)
    async with serving(group.pvdb, monkeypatch) as (ca_env, server):
        result = await run_client(CLIENT, prefix, env=ca_env)
        assert not server.done()

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
