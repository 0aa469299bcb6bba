"""Restart a procServ child through procServ's control port (TCP or a unix socket).

Whatever the auto-restart mode, the restart is the same and never waits out
procServ's holdoff: set the mode to OFF (^T, confirmed by procServ), kill the
child (^X) and wait for procServ to say it has gone, start a new one (^X again,
which procServ honours at once when no child runs), confirm the new child by its
PID line, and put the mode back as it was found.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..core.endpoint import parse_endpoint
from .procserv_protocol import (
    KILL,
    MODES,
    TOGGLE,
    ChildRunning,
    ChildShutDown,
    Event,
    Greeting,
    GreetingDone,
    LineReader,
    LineTooLong,
    Mode,
    NewChild,
    ShuttingDown,
    kill_enabled,
    parse_line,
)

CONNECT_TIMEOUT = 3.0
STEP_TIMEOUT = 10.0  # each answer procServ owes us: greeting, toggle, shut-down, new PID


class ProcServError(Exception):
    """The restart did not happen as it should; the text says why, for MSG."""


class ModeJournal(Protocol):
    """Where a restart notes the auto-restart mode it must put back.

    Kept outside the process (the state database), so that an IOC killed between
    the toggles can put procServ back as it was at its next start.
    """

    def mode_changed(self, endpoint: str, found: str) -> None: ...
    def mode_restored(self, endpoint: str) -> None: ...


@dataclass(frozen=True)
class RestartResult:
    old_pid: int | None  # None: no child was running
    new_pid: int
    mode: str  # the auto-restart mode, found and left as found
    killed_at: float  # time.monotonic() when the kill went out; 0.0 when no child ran
    took: float  # seconds, connection to the new child's PID line


class _Session:
    """One control-port connection: send keys, wait for events."""

    def __init__(self, endpoint: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.endpoint = endpoint
        self.reader = reader
        self.writer = writer
        self.lines = LineReader()
        self.events: list[Event] = []
        self.seen: list[str] = []  # a few lines, to quote when procServ talks nonsense
        self.kill_enabled: bool | None = None

    def _quick_ack(self) -> None:
        """Acknowledge procServ's output at once (Linux resets this after each ACK).

        procServ writes a message in pieces; with a delayed ACK here, Nagle's
        algorithm there holds the rest for ~40 ms, on every answer we wait for.
        """
        sock = self.writer.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)

    async def send(self, key: bytes) -> None:
        self.writer.write(key)
        await self.writer.drain()

    async def wait(self, accept: Callable[[Event], bool], what: str, timeout: float) -> Event:
        deadline = time.monotonic() + timeout
        while True:
            for index, event in enumerate(self.events):
                if accept(event):
                    del self.events[: index + 1]
                    return event
            self.events.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProcServError(
                    f"procServ at {self.endpoint} did not {what} within {timeout:g} s"
                )
            self._quick_ack()
            try:
                # asyncio.timeout, not wait_for: Python 3.11's wait_for can swallow
                # a cancellation, and the IOC would then never finish shutting down.
                async with asyncio.timeout(left):
                    data = await self.reader.read(4096)
            except TimeoutError:
                continue
            except OSError as exc:
                raise ProcServError(
                    f"procServ at {self.endpoint} dropped the connection: {exc}"
                ) from None
            if not data:
                raise ProcServError(
                    f"procServ at {self.endpoint} closed the connection before it would {what}"
                )
            try:
                lines = self.lines.feed(data)
            except LineTooLong as exc:
                raise ProcServError(
                    f"{self.endpoint} does not talk like procServ ({exc}, no newline)"
                ) from None
            for line in lines:
                if len(self.seen) < 20:
                    self.seen.append(line)
                enabled = kill_enabled(line)
                if enabled is not None:
                    self.kill_enabled = enabled
                parsed = parse_line(line)
                if parsed is not None:
                    self.events.append(parsed)


async def _connect(endpoint: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    try:
        where = parse_endpoint(endpoint)
    except ValueError as exc:  # the settings check this; a journal entry might not
        raise ProcServError(f"procServ at {endpoint}: not an endpoint: {exc}") from None
    try:
        if where.is_unix:
            coro = asyncio.open_unix_connection(where.path)
        else:
            coro = asyncio.open_connection(where.host, where.port)
        async with asyncio.timeout(CONNECT_TIMEOUT):
            return await coro
    except ConnectionRefusedError:
        raise ProcServError(f"procServ at {endpoint} refused the connection") from None
    except FileNotFoundError:
        raise ProcServError(f"procServ at {endpoint}: no such socket") from None
    except TimeoutError:
        raise ProcServError(f"procServ at {endpoint} did not accept a connection") from None
    except OSError as exc:
        raise ProcServError(
            f"procServ at {endpoint}: cannot connect: {exc.strerror or exc}"
        ) from None


async def restart(
    endpoint: str,
    *,
    step_timeout: float = STEP_TIMEOUT,
    journal: ModeJournal | None = None,
    leave_as: str | None = None,
) -> RestartResult:
    """Restart the child of the procServ at ``endpoint`` ("host:port" or "unix:/path").

    ``leave_as``: the auto-restart mode to leave procServ in (default: as found;
    a journal entry of an earlier restart cut short says otherwise).
    Raises :class:`ProcServError` with a sentence for MSG when it cannot.
    """
    began = time.monotonic()
    reader, writer = await _connect(endpoint)
    session = _Session(endpoint, reader, writer)
    try:
        return await _restart(session, began, step_timeout, journal, leave_as)
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


async def restore_mode(endpoint: str, want: str, *, step_timeout: float = STEP_TIMEOUT) -> str:
    """Put the procServ at ``endpoint`` in auto-restart mode ``want``; return what it was."""
    reader, writer = await _connect(endpoint)
    session = _Session(endpoint, reader, writer)
    try:
        found, _ = await _greeting(session, step_timeout)
        await _set_mode(session, found.mode, want, step_timeout)
        return found.mode
    finally:
        writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(1.0):
                await writer.wait_closed()


async def _greeting(session: _Session, step_timeout: float) -> tuple[Mode, int | None]:
    """Read procServ's greeting: its auto-restart mode and its child's PID (None: no child)."""
    endpoint = session.endpoint
    greeting: dict[str, object] = {}

    def collect(event: Event) -> bool:
        if isinstance(event, Greeting | Mode | ChildRunning | ChildShutDown):
            greeting[type(event).__name__] = event
        return isinstance(event, GreetingDone)

    try:
        await session.wait(collect, "send its greeting", step_timeout)
    except ProcServError as exc:
        if session.seen and "Greeting" not in greeting:
            raise ProcServError(
                f"{endpoint} does not talk like procServ (it said {session.seen[0][:80]!r})"
            ) from None
        raise exc
    mode_event = greeting.get("Mode")
    if "Greeting" not in greeting or not isinstance(mode_event, Mode):
        raise ProcServError(f"{endpoint} does not talk like procServ (no greeting or mode line)")
    running = greeting.get("ChildRunning")
    return mode_event, running.pid if isinstance(running, ChildRunning) else None


async def _restart(
    session: _Session,
    began: float,
    step_timeout: float,
    journal: ModeJournal | None,
    leave_as: str | None,
) -> RestartResult:
    endpoint = session.endpoint
    mode_event, old_pid = await _greeting(session, step_timeout)
    if session.kill_enabled is False:
        raise ProcServError(f"procServ at {endpoint} has its kill command disabled")
    found = leave_as if leave_as in MODES else mode_event.mode
    mode = mode_event.mode
    killed_at = 0.0
    try:
        if old_pid is not None and mode != "OFF" and mode_event.can_toggle:
            if journal is not None:
                journal.mode_changed(endpoint, found)
            mode = await _set_mode(session, mode, "OFF", step_timeout)
        if old_pid is not None:
            killed_at = time.monotonic()
            await session.send(KILL)
            if mode == "OFF":
                await session.wait(
                    lambda e: isinstance(e, ShuttingDown),
                    "report the child shut down",
                    step_timeout,
                )
                await session.send(KILL)  # no child now: ^X starts one at once
        else:
            await session.send(KILL)  # no child: ^X starts one
        new = await session.wait(
            lambda e: isinstance(e, NewChild) and e.pid != old_pid,
            "start a new child",
            step_timeout,
        )
        assert isinstance(new, NewChild)
    finally:
        if mode != found and mode_event.can_toggle:
            # Leave procServ as it was found, even when the restart went wrong.
            with contextlib.suppress(ProcServError, OSError):
                mode = await _set_mode(session, mode, found, step_timeout)
        if mode == found and journal is not None:
            journal.mode_restored(endpoint)
    return RestartResult(old_pid, new.pid, found, killed_at, time.monotonic() - began)


async def _set_mode(session: _Session, mode: str, want: str, timeout: float) -> str:
    """Press ^T until procServ says the mode is ``want`` (2.7: ON/OFF; 2.8: ON/OFF/ONESHOT)."""
    for _ in range(len(MODES)):
        if mode == want:
            return mode
        await session.send(TOGGLE)
        event = await session.wait(
            lambda e: isinstance(e, Mode) and e.toggled, "confirm the mode toggle", timeout
        )
        assert isinstance(event, Mode)
        mode = event.mode
    if mode != want:
        raise ProcServError(f"procServ at {session.endpoint}: cannot set auto restart to {want}")
    return mode
