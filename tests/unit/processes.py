"""Watching real processes from a test: has one gone, and waiting until it has."""

from __future__ import annotations

import asyncio
import os

import psutil

TIMEOUT = 10.0


def gone(pid: int) -> bool:
    """Not running: reaped, or a zombie nobody has reaped yet."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


async def wait_gone(pid: int, timeout: float = TIMEOUT) -> None:
    """Wait for any process (not only a child) to exit, through a pidfd."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    exited = asyncio.Event()
    loop.add_reader(fd, exited.set)
    try:
        await asyncio.wait_for(exited.wait(), timeout)
    finally:
        loop.remove_reader(fd)
        os.close(fd)
