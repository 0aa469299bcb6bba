"""One client's monitor updates on their way to its socket: coalesced, never awaited by others.

The server hands an update to :meth:`CoalescingSender.offer` and moves on at
once; the sender's own task turns the waiting updates into bytes and writes them
while the connection takes them. While the circuit carries out the client's
requests (:meth:`~CoalescingSender.hold`), updates wait; once the requests'
replies are written (:meth:`~CoalescingSender.release`) the sender's task sends
them, in the loop's next turn.
When the connection's send buffer is above its high-water mark the sender
stops and the updates keep coalescing (the latest per subscription,
:class:`~bgrscrpt_ioc.core.flow.Coalescer`), as EPICS base's rsrv does. A
client that stays behind past the :class:`SlowClientBound` is reported
through ``on_slow`` (once); the circuit then disconnects it.

The transport is anything with asyncio's ``write``/``get_write_buffer_size``/
``is_closing`` and a ``drain`` coroutine that returns once the buffer is below
its low-water mark (and raises ConnectionError once the connection is lost), so
tests can drive it with a fake.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol

from bgrscrpt_ioc.core.flow import Coalescer, SlowClientBound

log = logging.getLogger(__name__)

HIGH_WATER = 64 * 1024
"""Bytes in the connection's user-space send buffer above which nothing more is queued."""
LOW_WATER = 16 * 1024
CHUNK = 64 * 1024
"""Updates are joined into writes of about this many bytes."""


class Transport(Protocol):
    def write(self, data: bytes) -> None: ...
    def get_write_buffer_size(self) -> int: ...
    def is_closing(self) -> bool: ...


class ClientTooSlow(ConnectionError):
    """The client stayed behind past the bound; its connection is being closed."""


class CoalescingSender:
    """Coalesces and sends one circuit's monitor updates (see the module docstring).

    ``build(item)`` turns a waiting update into the bytes to send, or None to
    drop it; it runs in the sender's task right before the write, never while
    an update is offered.
    """

    def __init__(
        self,
        transport: Transport,
        drain: Callable[[], Awaitable[None]],
        build: Callable[[Any], bytes | None],
        *,
        bound: SlowClientBound,
        on_slow: Callable[[str], None],
        high_water: int = HIGH_WATER,
        chunk: int = CHUNK,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transport = transport
        self._drain = drain
        self._build = build
        self._bound = bound
        self._on_slow = on_slow
        self.high_water = high_water
        self._chunk = chunk
        self._clock = clock
        self._waiting: Coalescer[Hashable, Any] = Coalescer()
        self._wake = asyncio.Event()
        self._held = False
        self._paused = False
        self._closed = False
        self.behind_since: float | None = None
        """When the connection last stopped taking data while some waited (None: not behind)."""
        self.slow_reason: str | None = None
        self.sent_updates = 0
        self.build_failures = 0

    # ---- what the server calls -------------------------------------------------

    def offer(self, key: Hashable, item: Any, size: int) -> None:
        """Queue ``item`` as the latest update of ``key``; never blocks, never raises."""
        if self._closed:
            return
        self._waiting.offer(key, item, size)
        if self.behind_since is not None:
            # Only the bytes bound here (this runs for every update of every
            # subscription): the time bound is wait_writable's timer.
            waiting = self._waiting.waiting_bytes + self._transport.get_write_buffer_size()
            if waiting > self._bound.max_bytes:
                reason = self._bound.verdict(self.behind_since, waiting, self._clock())
                self._give_up(reason or f"{waiting} bytes waiting for it")
            return  # the sender is waiting for room, not for updates
        if not self._paused and not self._held:
            self._wake.set()

    def hold(self) -> None:
        """The circuit is carrying out the client's requests: updates offered now wait
        for the reply they follow (:meth:`write_reply`) or for :meth:`release`."""
        self._held = True

    def release(self) -> None:
        """The requests are done and their replies written: what waits goes out next.

        From the sender's task, in the loop's next turn, not in this one: measured
        with pyepics' ``caput(wait=True)`` against EPICS base (make bench), a put's
        round trip was 0.30 ms this way and 0.31 to 0.34 ms with its update sent in
        the turn of its reply. A pyepics client handles the update in its CA thread,
        which needs the interpreter lock its caller holds once the put has returned;
        the later the update comes, the less the two contend."""
        self._held = False
        if self._waiting and not self._paused and not self._closed:
            self._wake.set()

    def write_reply(self, reply: bytes) -> None:
        """Write ``reply`` now: the updates its request caused wait for :meth:`release`.

        The reply goes out before they are built: a put's caller waits for the
        reply, not for its monitor update (building them first was measured to
        slow the put's round trip). Nothing to write (a reply already out): nothing.
        """
        if reply:
            self._transport.write(reply)

    def discard(self, key: Hashable) -> None:
        """Forget what waits for ``key`` (its subscription has ended)."""
        self._waiting.discard(key)

    def pause(self) -> None:
        """Stop sending (the client sent EventsOff); updates keep coalescing."""
        self._paused = True

    def resume(self) -> None:
        """Send again, starting with the latest of what came meanwhile (EventsOn)."""
        self._paused = False
        self._wake.set()

    def close(self) -> None:
        """Drop everything waiting; ``run`` ends."""
        self._closed = True
        self._waiting.clear()
        self._wake.set()

    @property
    def waiting(self) -> int:
        """How many subscriptions have an update waiting."""
        return len(self._waiting)

    @property
    def replaced(self) -> int:
        """Updates replaced by a newer one before they were sent (a running count)."""
        return self._waiting.replaced

    def waiting_bytes(self) -> int:
        """Estimated bytes waiting for the client: coalesced updates plus the send buffer."""
        return self._waiting.waiting_bytes + self._transport.get_write_buffer_size()

    # ---- flow control ------------------------------------------------------------

    async def wait_writable(self) -> None:
        """Return once the connection takes data again; raise ClientTooSlow past the bound.

        Replies to the client's requests wait here too, so one bound covers both.
        """
        if self._transport.get_write_buffer_size() <= self.high_water:
            return
        now = self._clock()
        if self.behind_since is None:
            self.behind_since = now
        since = self.behind_since
        reason = self._bound.verdict(since, self.waiting_bytes(), now)
        if reason is None and self.slow_reason is None:
            try:
                async with asyncio.timeout(max(since + self._bound.seconds - now, 0.0)):
                    await self._drain()
            except TimeoutError:
                behind = self._clock() - since
                reason = f"behind for {behind:.1f} s (bound {self._bound.seconds:g} s)"
            except ConnectionError:
                if self.slow_reason is not None:  # given up meanwhile (too many bytes)
                    raise ClientTooSlow(self.slow_reason) from None
                raise
            else:
                self.behind_since = None
                return
        self._give_up(reason or self.slow_reason or "behind")
        raise ClientTooSlow(self.slow_reason)

    def _give_up(self, reason: str) -> None:
        """Past the bound: stop for good and tell the circuit, once."""
        if self.slow_reason is not None:
            return
        self.slow_reason = reason
        self.close()
        self._on_slow(reason)

    # ---- the sender's task -------------------------------------------------------

    async def run(self) -> None:
        """Send what waits, whenever something does, until closed or the connection fails.

        Raises ConnectionError (ClientTooSlow included) when the connection
        cannot go on; returns when closed.
        """
        while not self._closed:
            await self._wake.wait()
            self._wake.clear()
            while self._waiting and not self._paused and not self._closed:
                await self.wait_writable()
                if self._transport.is_closing():
                    raise ConnectionResetError("the connection is closing")
                self._send_some()

    def _send_some(self) -> None:
        """Build and write waiting updates, oldest first, until the buffer is full.

        Raises ConnectionResetError when the connection closes under it.

        Runs without awaiting anything: nothing can end a subscription between
        the moment its update leaves the coalescer and the moment it is written.
        """
        items = self._waiting.take()
        parts: list[bytes] = []
        size = 0
        for index, (_key, item, _size) in enumerate(items):
            try:
                data = self._build(item)
            except Exception:  # one bad update must not stop the client's stream
                self.build_failures += 1
                if self.build_failures == 1:  # a bug: its traceback once, not per update
                    log.exception("a monitor update could not be built; dropped (not repeated)")
                data = None
            if data:
                parts.append(data)
                size += len(data)
                self.sent_updates += 1
            if size >= self._chunk:
                self._transport.write(b"".join(parts))
                parts, size = [], 0
                if self._transport.is_closing():
                    raise ConnectionResetError("the connection is closing")
                if self._transport.get_write_buffer_size() > self.high_water:
                    self._waiting.put_back(items[index + 1 :])
                    return
        if parts:
            self._transport.write(b"".join(parts))
