"""The procServ client against control ports that misbehave (real sockets on
loopback), and against a real procServ whose kill command is refused or whose
child will not start again. Each must be a ProcServError with a clear sentence,
never a hang or another exception."""

from __future__ import annotations

import asyncio
import contextlib
import time

import pytest

from bgrscrpt_ioc.recovery.procserv import ProcServError, restart
from devsupport.ports import free_loopback_port

GREETING = (
    b"@@@ Welcome to procServ (procServ Process Server 2.7.0)\r\n"
    b"@@@ Use ^X to kill the child, auto restart is OFF, use ^T to toggle auto restart\r\n"
    b'@@@ Child "SIM" PID: 4242\r\n'
    b"@@@ 0 user(s) and 0 logger(s) connected (plus you)\r\n"
)


@contextlib.asynccontextmanager
async def control_port(handler):
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


async def test_refused():
    endpoint = f"127.0.0.1:{free_loopback_port()}"
    with pytest.raises(ProcServError, match=f"procServ at {endpoint} refused the connection"):
        await restart(endpoint)


async def test_no_such_unix_socket(tmp_path):
    endpoint = f"unix:{tmp_path / 'nothing.sock'}"
    with pytest.raises(ProcServError, match="no such socket"):
        await restart(endpoint)


async def test_garbage():
    async def handler(reader, writer):
        writer.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    async with control_port(handler) as endpoint:
        with pytest.raises(ProcServError, match="does not talk like procServ.*HTTP/1.1 400"):
            await restart(endpoint, step_timeout=1.0)


async def test_silence_is_a_timeout_not_a_hang():
    async def handler(reader, writer):
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    async with control_port(handler) as endpoint:
        began = time.monotonic()
        with pytest.raises(ProcServError, match="did not send its greeting within 1 s"):
            await restart(endpoint, step_timeout=1.0)
        assert time.monotonic() - began < 5.0


async def test_closing_mid_restart():
    got: list[bytes] = []

    async def handler(reader, writer):
        writer.write(GREETING)
        await writer.drain()
        got.append(await reader.read(1))  # the kill: then procServ goes away
        writer.close()

    async with control_port(handler) as endpoint:
        with pytest.raises(ProcServError, match="closed the connection before it would report"):
            await restart(endpoint, step_timeout=2.0)
    assert got == [b"\x18"]


async def test_kill_command_disabled():
    async def handler(reader, writer):
        writer.write(
            GREETING.replace(b"@@@ Use ^X to kill the child, ", b"@@@ Kill command disabled, ")
        )
        await writer.drain()
        with contextlib.suppress(ConnectionError):
            await reader.read()
        writer.close()

    async with control_port(handler) as endpoint:
        with pytest.raises(ProcServError, match="kill command disabled"):
            await restart(endpoint, step_timeout=1.0)


async def test_a_toggle_never_confirmed_puts_nothing_else_through():
    got = bytearray()

    async def handler(reader, writer):
        writer.write(GREETING.replace(b"auto restart is OFF", b"auto restart is ON"))
        await writer.drain()
        while data := await reader.read(16):
            got.extend(data)
        writer.close()

    async with control_port(handler) as endpoint:
        with pytest.raises(ProcServError, match="did not confirm the mode toggle"):
            await restart(endpoint, step_timeout=0.5)
    # ^T went out, never ^X: with the mode unknown, the child is left alone.
    assert b"\x14" in got
    assert b"\x18" not in got
