"""A caproto server in the test's own event loop, and a libca client run against it.

For tests of the PV layer and of the CA server (``bgrscrpt_ioc.ca.server``) that
want a real Channel Access client (pyepics, in a process of its own) without
starting a whole IOC.

The server is the IOC's own (:class:`~bgrscrpt_ioc.ca.server.FlowContext`). With
``BGRSCRPT_STOCK_CAPROTO=1`` in the environment it is caproto's plain asyncio
``Context`` instead: each test of a caproto fix must then fail, which is how to
check that it proves the fix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from caproto.asyncio.server import Context as StockContext

from bgrscrpt_ioc.ca.server import FlowContext
from devsupport.ports import free_ca_port

ROOT = Path(__file__).resolve().parents[2]
STOCK = os.environ.get("BGRSCRPT_STOCK_CAPROTO") == "1"
"""Serve with caproto's plain Context (to see the caproto-fix tests fail)."""


async def _wait_listening(port: int, server: asyncio.Task, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.done():
            server.result()  # raises what stopped it
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise TimeoutError(f"no CA server on port {port}")


@dataclass
class Served:
    env: dict[str, str]
    """The CA environment a client needs to find the server."""
    task: asyncio.Task
    context: Any
    port: int


@contextlib.asynccontextmanager
async def ca_server(
    pvdb: dict[str, Any], monkeypatch: pytest.MonkeyPatch, context_class: Any = None
) -> AsyncIterator[Served]:
    """Serve ``pvdb`` on a loopback port of its own until the block ends."""
    port = free_ca_port()
    # Beacons go to a socket of ours: to the CA repeater port, with no repeater
    # running, each one is refused and logged with a traceback.
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
    if context_class is None:
        context_class = StockContext if STOCK else FlowContext
    context = context_class(pvdb, ["127.0.0.1"])
    server = asyncio.create_task(context.run())
    try:
        await _wait_listening(port, server)
        yield Served(env=ca_env, task=server, context=context, port=port)
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        beacon_sink.close()


@contextlib.asynccontextmanager
async def serving(
    pvdb: dict[str, Any], monkeypatch: pytest.MonkeyPatch, context: Any = None
) -> AsyncIterator[tuple[dict[str, str], asyncio.Task]]:
    """Serve ``pvdb`` on a loopback port of its own; yields (CA environment, server task).

    ``context``: the server's ``Context`` class (default: the flow-controlled
    ``FlowContext``, or caproto's own with ``BGRSCRPT_STOCK_CAPROTO=1``), e.g. the
    IOC's ``bgrscrpt_ioc.ca.server.IocContext``.
    """
    async with ca_server(pvdb, monkeypatch, context_class=context) as served:
        yield served.env, served.task


async def run_client(
    code: str, *args: str, env: dict[str, str], timeout: float = 60, stdin: str | None = None
) -> Any:
    """Run ``code`` in a Python process of its own, in the repository (it may import
    ``tests.*``), with ``stdin``; the JSON of its last output line."""
    client = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        *args,
        env={**os.environ, **env},
        cwd=ROOT,
        stdin=asyncio.subprocess.PIPE if stdin is not None else None,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        data = stdin.encode() if stdin is not None else None
        out, err = await asyncio.wait_for(client.communicate(data), timeout=timeout)
    finally:
        if client.returncode is None:
            client.kill()
            await client.wait()
    assert client.returncode == 0, err.decode()
    return json.loads(out.decode().strip().splitlines()[-1])
