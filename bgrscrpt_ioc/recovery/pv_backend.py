"""Restart an IOC through IBEX's procServControl PVs: ``$(P)CS:PS:<IOC>:RESTART``.

Put 1 to RESTART, then confirm with ``$(P)CS:PS:<IOC>:STATUS``: it leaves
``Running`` and returns to it. procServControl polls procServ, so a restart
quicker than its poll may never show as down; then STATUS must still read
Running once the put has completed and a short settle has passed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from caproto import CaprotoError, ChannelType
from caproto.asyncio.client import Context

from ..ca.client import refusal, why_not_connected

CONNECT_TIMEOUT = 5.0
DOWN_TIMEOUT = 3.0  # how long STATUS may take to show the restart
UP_TIMEOUT = 30.0
RUNNING = "Running"


class PvRestartError(Exception):
    """The restart did not happen as it should; the text says why, for MSG."""


async def restart(context: Context, prefix: str, ioc: str) -> str:
    """Restart ``ioc`` through procServControl; return what STATUS showed, in words."""
    base = f"{prefix}CS:PS:{ioc}:"
    try:
        restart_pv, status_pv = await context.get_pvs(
            f"{base}RESTART", f"{base}STATUS", timeout=None
        )
    except ValueError as exc:  # a name too long for a search (a long prefix and IOC name)
        raise PvRestartError(f"{base}RESTART: {exc}") from None
    for pv in (restart_pv, status_pv):
        try:
            await pv.wait_for_connection(timeout=CONNECT_TIMEOUT)
        except (TimeoutError, CaprotoError):
            raise PvRestartError(
                f"{pv.name} does not connect ({why_not_connected(pv)}): is procServControl running?"
            ) from None
    seen: asyncio.Queue[str] = asyncio.Queue()

    async def on_status(sub: Any, response: Any) -> None:
        value = response.data[0]
        seen.put_nowait(value.decode("latin-1") if isinstance(value, bytes) else str(value))

    sub = status_pv.subscribe(data_type=ChannelType.TIME_STRING)
    token = sub.add_callback(on_status)
    try:
        try:
            reply = await restart_pv.write([1], wait=True, timeout=CONNECT_TIMEOUT)
        except (TimeoutError, CaprotoError) as exc:
            raise PvRestartError(f"caput {restart_pv.name} 1 failed: {exc}") from None
        refused = refusal(reply)
        if refused is not None:
            raise PvRestartError(f"caput {restart_pv.name} 1 refused: {refused}")
        went_down = await _wait_status(seen, lambda s: s != RUNNING, DOWN_TIMEOUT)
        if went_down is None:
            current = await _latest(seen)
            if current == RUNNING or current is None and await _read(status_pv) == RUNNING:
                return f"{ioc} STATUS stayed Running"
            raise PvRestartError(f"{status_pv.name} is {current!r}, not Running")
        back = await _wait_status(seen, lambda s: s == RUNNING, UP_TIMEOUT)
        if back is None:
            raise PvRestartError(
                f"{status_pv.name} did not return to Running within {UP_TIMEOUT:g} s"
            )
        return f"{ioc} STATUS {went_down} then Running"
    finally:
        with contextlib.suppress(Exception):
            await sub.remove_callback(token)


async def _wait_status(queue: asyncio.Queue[str], accept: Any, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            async with asyncio.timeout(left):  # not wait_for: it can lose a cancellation
                value = await queue.get()
        except TimeoutError:
            return None
        if accept(value):
            return value
    return None


async def _latest(queue: asyncio.Queue[str]) -> str | None:
    value = None
    while not queue.empty():
        value = queue.get_nowait()
    return value


async def _read(pv: Any) -> str | None:
    try:
        response = await pv.read(data_type=ChannelType.STRING, timeout=CONNECT_TIMEOUT)
    except (TimeoutError, CaprotoError):
        return None
    value = response.data[0]
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)
