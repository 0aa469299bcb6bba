"""One client's Channel Access circuit: caproto 1.3's asyncio circuit, extended by subclassing.

What it changes, and why:

* **Flow control, per client.** caproto queues every monitor update for every
  circuit in one server-wide task that *awaits* room in each circuit's queue:
  one client that stops reading freezes the monitors of every client, and its
  queue keeps up to 1000 past updates per subscription. Here the server hands
  an update to the circuit's :class:`~bgrscrpt_ioc.ca.sender.CoalescingSender`
  without waiting (:meth:`FlowCircuit.offer`): only the latest update per
  subscription waits, and the circuit's own task writes it while the socket
  takes data. A client that stays behind past the bound is disconnected with
  one log line.
* **Requests** are carried out in the task that read them, with input bounded
  and faults kept to one line: :mod:`bgrscrpt_ioc.ca.requests`.
* **Disconnection, once.** When a client vanishes mid-stream, caproto's
  subscription task could cancel and await *itself* ("await wasn't used with
  future"), and a cancellation swallowed by ``asyncio.wait_for`` left a task
  waiting for ever. Here the TCP handler alone ends the circuit; the other task
  only closes the socket, and is cancelled until it has ended.
* **No task per wait.** caproto's ``write_event.wait(timeout)`` made a task and
  a timer for every read and every new subscription; :class:`_WriteDone` needs
  neither.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import TYPE_CHECKING, Any

import caproto as ca
from caproto import apply_arr_filter
from caproto._utils import apply_deadband_filter
from caproto.asyncio import server as _asyncio_server

from bgrscrpt_ioc.aio import cancel_and_wait
from bgrscrpt_ioc.core.ca_frames import FrameGuard

from .limits import SLOW_CLIENT_MAX_BYTES_VAR, SLOW_CLIENT_TMO_VAR
from .publish_after_reply import publish_noted
from .requests import REQUESTS, RequestHandling
from .sender import CoalescingSender

if TYPE_CHECKING:
    from .server import FlowContext

_CANCEL_TIMEOUT = 5.0  # s: how long a circuit's end waits for its subscription task
_HOST_ENDIAN = ">" if sys.byteorder == "big" else "<"


class _WriteDone(asyncio.Event):
    """caproto's circuit ``write_event``, whose ``wait(timeout)`` needs no task when set.

    Writes are carried out in the request's own turn here, so it is always set
    when a read or a new subscription asks; caproto's ``asyncio.wait_for`` made a
    task and a timer for each of those.
    """

    async def wait(self, timeout: float | None = None) -> bool:  # type: ignore[override]
        if self.is_set():
            return True
        try:
            async with asyncio.timeout(timeout):
                await super().wait()
        except TimeoutError:
            pass
        return self.is_set()


def wire_size(values: Any) -> int:
    """An estimate of a monitor update's bytes on the wire (header and metadata included)."""
    overhead = 64
    nbytes = getattr(values, "nbytes", None)
    if isinstance(nbytes, int):
        return overhead + nbytes
    if isinstance(values, bytes | bytearray | str):
        return overhead + len(values)
    try:
        count = len(values)
    except TypeError:
        return overhead + 8
    if count and isinstance(values[0], str | bytes):
        return overhead + 40 * count  # DBR_STRING: 40 bytes each
    return overhead + 8 * count


class FlowCircuit(RequestHandling, _asyncio_server.VirtualCircuit):
    """caproto's asyncio server circuit with the changes in the module docstring."""

    context: FlowContext

    def __init__(self, circuit: ca.VirtualCircuit, client: Any, context: FlowContext) -> None:
        super().__init__(circuit, client, context)
        self.write_event = _WriteDone()
        self.write_event.set()  # and it stays set: no write is ever under way when another asks
        self._transport = client.writer.transport
        limits = context.limits
        self._frames = FrameGuard(limits.max_message_bytes, REQUESTS)
        self._sender = CoalescingSender(
            self._transport,
            client.writer.drain,
            self._build,
            bound=limits.slow_client,
            on_slow=self._too_slow,
        )
        self._closed = False
        self._live_ids: set[int] = set()  # subscription ids in use on this circuit

    @property
    def sender(self) -> CoalescingSender:
        return self._sender

    # ---- tasks and the end of the circuit ---------------------------------------

    async def run(self) -> None:
        """Start the sender; requests are carried out by the TCP handler (``recv``)."""
        self._sub_task = self.tasks.create(self._send_updates())

    async def _send_updates(self) -> None:
        try:
            await self._sender.run()
        except OSError:  # the connection failed or the client is too slow
            self.close()  # the TCP handler ends the circuit

    def close(self) -> None:
        """Close the connection at once (idempotent); what waits for the client is dropped."""
        if self._closed:
            return
        self._closed = True
        self._sender.close()
        if not self._transport.is_closing():
            self._transport.abort()  # not close(): that would wait to flush to a stopped client

    async def _on_disconnect(self) -> None:
        """End the circuit: forget its subscriptions, close the socket, stop its task.

        Run by the TCP handler only; idempotent.
        """
        self.close()
        if self.connected:
            self.connected = False
            for sub_spec, subs in list(self.subscriptions.items()):
                for sub in list(subs):
                    self._forget(sub_spec, sub)
                await self._release(sub_spec)
            self.subscriptions.clear()
        task = self._sub_task
        if task is not None and task is not asyncio.current_task():
            await cancel_and_wait([task], _CANCEL_TIMEOUT, what="a circuit's subscriptions")
            self._sub_task = None

    # ---- monitor updates ----------------------------------------------------------

    def offer(
        self, sub_spec: Any, sub: Any, metadata: Any, values: Any, flags: int, size: int
    ) -> None:
        """Take an update for ``sub`` (one of ours) from the server; never waits.

        ``size`` is :func:`wire_size` of ``values``, computed once per update by the caller.
        """
        if not self.connected:
            return
        dbnd = sub.channel_filter.dbnd
        if dbnd is not None:
            tracked = apply_deadband_filter(
                previous_value=self.context.last_dead_band.get(sub),
                new_value=self._filtered(sub_spec, sub, values),
                sub=sub,
                flags=flags,
                host_endian=_HOST_ENDIAN,
            )
            if tracked is None:
                return
            self.context.last_dead_band[sub] = tracked
        self._sender.offer(sub.subscriptionid, (sub_spec, sub, metadata, values), size)

    @staticmethod
    def _filtered(sub_spec: Any, sub: Any, values: Any) -> Any:
        values = apply_arr_filter(sub_spec.channel_filter.arr, values)
        count = sub.data_count or len(values)
        return values if count == len(values) else values[:count]

    def _build(self, item: Any) -> bytes | None:
        """The bytes of one waiting update (in the sender's task, right before it is written)."""
        sub_spec, sub, metadata, values = item
        values = self._filtered(sub_spec, sub, values)
        command = sub.channel.subscribe(
            data=values,
            metadata=metadata,
            data_type=sub.data_type,
            data_count=sub.data_count or len(values),
            subscriptionid=sub.subscriptionid,
            status=1,
        )
        sync = sub.channel_filter.sync
        if sync is not None:
            # Edge-triggered sync filter: only the first of equal updates goes out.
            last = self.context.last_sync_edge_update[sub][sync.s]
            if last.get(sync.m) == command:
                return None
            last[sync.m] = command
        return b"".join(self.circuit.send(command))

    def _forget(self, sub_spec: Any, sub: Any) -> None:
        """Remove ``sub`` everywhere the server keeps it; nothing of it is sent after this."""
        self._sender.discard(sub.subscriptionid)
        self._live_ids.discard(sub.subscriptionid)
        for table in (self.subscriptions, self.context.subscriptions):
            subs = table.get(sub_spec)
            if subs is None:
                continue
            with contextlib.suppress(ValueError):
                subs.remove(sub)
            if not subs:
                del table[sub_spec]
        resend = self.subscriptions_to_resend.get(sub_spec)
        if resend and sub in resend:
            resend.remove(sub)
        self.context.last_dead_band.pop(sub, None)
        self.context.last_sync_edge_update.pop(sub, None)

    async def _release(self, sub_spec: Any) -> None:
        """Stop the PV publishing ``sub_spec`` to the server once no client wants it."""
        if not self.context.subscriptions.get(sub_spec):
            await sub_spec.db_entry.unsubscribe(self.context.subscription_queue, sub_spec)

    async def _cull_subscriptions(self, db_entry: Any, func: Any) -> tuple[Any, ...]:
        """caproto's EventCancel/ClearChannel helper, dropping what waits for them too."""
        removed = [
            (sub_spec, sub)
            for sub_spec, subs in self.subscriptions.items()
            for sub in subs
            if func(sub)
        ]
        for sub_spec, sub in removed:
            self._forget(sub_spec, sub)
            await self._release(sub_spec)
        return tuple(removed)

    # ---- sending --------------------------------------------------------------------

    async def _send_buffers(self, *buffers: Any) -> None:
        """Write a reply; wait while the client is behind, as long as the bound allows."""
        if self._closed or self._transport.is_closing():
            raise ConnectionResetError("the circuit is closed")
        self._sender.write_reply(b"".join(buffers))
        await publish_noted()  # before any wait for this client (publish_after_reply)
        await self._sender.wait_writable()

    def _too_slow(self, reason: str) -> None:
        self.fault(
            "slow",
            f"disconnected as too slow: {reason} "
            f"({SLOW_CLIENT_TMO_VAR}, {SLOW_CLIENT_MAX_BYTES_VAR})",
        )
        self.close()

    def fault(self, kind: str, message: str) -> bool:
        """Log a fault of this client (one line, rate-limited); True if it was logged."""
        return self.context.client_faults.report(
            kind,
            message,
            address=self.circuit.address,
            hostname=self.client_hostname,
            username=self.client_username,
        )
