"""A monitor whose value base could not convert never stops the IOC's other updates.

LAST_RESTART (a stringin) read as DBR_CHAR is 0 while it is empty, and refused
once it holds a time ("2026-..." is outside a CHAR). Base then sends that
monitor ECA_GETFAIL updates; caproto 1.3 has no status to send in a monitor
update, and raised inside the publication instead, which lost the update for
every other subscriber of the PV and put a traceback in the log.
"""

from __future__ import annotations

import asyncio
import json
import sys

import pytest
from caproto import ChannelType

from bgrscrpt_ioc.ca.server import IocContext
from bgrscrpt_ioc.ca.watch_pvs import WatchView, build_watch_pvs
from bgrscrpt_ioc.core.dbr import Refused
from tests.unit.ca_server import ROOT, serving


class _Controller:
    def set_enabled(self, enabled: bool) -> None: ...
    def restart_now(self) -> None: ...
    def set_dry_run(self, dry_run: bool) -> None: ...


def _watch(prefix: str):
    ctl = _Controller()
    return build_watch_pvs(prefix, [("W", ctl, WatchView())], ctl)


async def test_a_value_base_refuses_reads_as_a_refusal_and_monitors_as_zeros():
    watches = _watch("R:")
    channel = watches.watches["W"].pvdb["R:BGRSCRPT:WATCH:W:LAST_RESTART"]
    assert (await channel.read(ChannelType.TIME_CHAR))[1].tolist() == [0]  # "" reads 0
    await watches.watches["W"].publish(WatchView(last_restart="2026-11-26T03:08:41.432"))
    with pytest.raises(Refused):
        await channel.read(ChannelType.TIME_CHAR)
    metadata, values = await channel._read(ChannelType.TIME_CHAR)  # what a monitor gets
    assert values.tolist() == [0] and metadata.status == 0 and metadata.severity == 0
    assert (await channel.read(ChannelType.DOUBLE))[1].tolist() == [2026.0]


MONITOR = r"""
import json, sys, time, epics
from epics import ca
name = sys.argv[1]
seen = {"char": [], "string": []}
chid = ca.create_channel(name, connect=True)
keep = []  # pyepics' subscription handles: libca calls back through them
for key, ftype in (("char", ca.dbr.TIME_CHAR), ("string", ca.dbr.TIME_STRING)):
    keep.append(ca.create_subscription(
        chid, ftype=ftype,
        callback=lambda value=None, key=key, **kw: seen[key].append(
            value.tolist() if hasattr(value, "tolist") else value)))
deadline = time.monotonic() + 20
while time.monotonic() < deadline and not (seen["char"] and seen["string"]):
    time.sleep(0.01)
print("subscribed", flush=True)
sys.stdin.readline()  # the server has published the new value
while time.monotonic() < deadline and len(seen["string"]) < 2:
    time.sleep(0.01)
time.sleep(0.2)
print(json.dumps(seen), flush=True)
"""


async def test_a_monitor_whose_new_value_base_refuses_does_not_stop_the_others(monkeypatch, caplog):
    watches = _watch("M:")
    name = "M:BGRSCRPT:WATCH:W:LAST_RESTART"
    async with serving(watches.pvdb, monkeypatch, context=IocContext) as (ca_env, server):
        client = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            MONITOR,
            name,
            env={**__import__("os").environ, **ca_env},
            cwd=ROOT,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert client.stdout is not None and client.stdin is not None
            line = await asyncio.wait_for(client.stdout.readline(), 30)
            if line.decode().strip() != "subscribed":
                _, err = await client.communicate()
                raise AssertionError(f"the client did not subscribe: {err.decode()}")
            time_value = "2026-11-26T03:08:41.432"
            await watches.watches["W"].publish(WatchView(last_restart=time_value))
            client.stdin.write(b"go\n")
            await client.stdin.drain()
            out, err = await asyncio.wait_for(client.communicate(), 30)
        finally:
            if client.returncode is None:
                client.kill()
                await client.wait()
        assert client.returncode == 0, err.decode()
        seen = json.loads(out.decode().strip().splitlines()[-1])
        assert not server.done()
    assert seen["string"] == ["", time_value], seen
    # The CHAR monitor: 0 for "", then base's payload for a refused update (zeros).
    assert seen["char"] == [0, 0] or seen["char"] == [[0], [0]], seen
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
