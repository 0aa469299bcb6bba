"""A caproto server in the test's own event loop, and a libca client run against it.

For tests of the PV layer and of caproto's fixes that want a real Channel Access
client (pyepics, in a process of its own) without starting a whole IOC.
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
from pathlib import Path
from typing import Any

import pytest
from caproto.asyncio.server import start_server

from bgrscrpt_ioc.epics_base import free_ca_port

ROOT = Path(__file__).resolve().parents[2]


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


@contextlib.asynccontextmanager
async def serving(
    pvdb: dict[str, Any], monkeypatch: pytest.MonkeyPatch, context: Any = None
) -> AsyncIterator[tuple[dict[str, str], asyncio.Task]]:
    """Serve ``pvdb`` on a loopback port of its own; yields (CA environment, server task).

    ``context``: the server's ``Context`` class (default: caproto's own, through
    ``start_server``), e.g. the IOC's ``bgrscrpt_ioc.app.IocContext``.
    """
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
    if context is None:
        server = asyncio.create_task(start_server(pvdb, interfaces=["127.0.0.1"]))
    else:
        server = asyncio.create_task(context(pvdb, ["127.0.0.1"]).run())
    try:
        await _wait_listening(port, server)
        yield ca_env, server
    finally:
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await server
        beacon_sink.close()


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
