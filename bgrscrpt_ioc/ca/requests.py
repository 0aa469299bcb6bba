"""How a circuit carries out a client's requests: in order, in the task that read them.

Mixed into :class:`~bgrscrpt_ioc.ca.circuit.FlowCircuit`; what it changes in
caproto 1.3's asyncio circuit, and why:

* **Every request in the TCP handler, in order, as rsrv does.** caproto passes
  each request through a queue to a task of its own (a trip round the event
  loop per request) and starts another task per put. Here the task that reads
  the socket carries the request out and sends the reply; while a reply waits
  for a slow client, the circuit reads nothing more from it, so its backlog of
  requests is bounded by one read. A read that holds one put of one value and
  nothing else skips caproto's message layers (:mod:`~bgrscrpt_ioc.ca.put_lane`),
  and a put to a scalar PV is answered as soon as the PV has accepted it
  (:mod:`~bgrscrpt_ioc.ca.answer_on_accept`). While it carries requests out, the
  channels they write to only note that they must publish, and the monitor
  updates wait in the circuit's sender; once the replies are written, the
  channels publish (:mod:`~bgrscrpt_ioc.ca.publish_after_reply`) and the
  sender's task sends the updates in the loop's next turn. A put is answered
  before its updates are read, built or sent.
* **Bounded input.** A message whose header claims more than
  ``EPICS_CA_MAX_ARRAY_BYTES`` (plus header room, as EPICS base), or names a
  command no client sends, closes the circuit as soon as the header is read,
  before its payload is waited for or buffered.
* **Quiet under abuse.** Whatever a client sends that is wrong costs one log
  line (:mod:`bgrscrpt_ioc.ca.client_faults`), never a traceback; a bug of this
  IOC keeps its traceback.
* **Fair to the rest of the IOC.** Reading data already received, and sending
  a reply the socket takes at once, never give the event loop back: a client
  that streams requests and reads its replies as fast would keep the loop for
  itself (the heartbeat, the scripts' supervision and every other client
  waited seconds). Here the circuit lets the loop run after each full read
  (the client has more waiting) and every :data:`TURN_BUDGET` seconds of
  work, as rsrv's thread per client is preempted.
* **Subscriptions kept straight.** caproto's ClearChannel compared a channel
  with a number and so never ended the channel's subscriptions; a subscription
  whose first read failed stayed behind and failed every publication after;
  a subscription id used twice broke the first subscription's updates.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import caproto as ca
from caproto import CaprotoNetworkError
from caproto._commands import extract_data
from caproto._utils import CaprotoConversionError
from caproto.server.common import DisconnectedCircuit, LoopExit

from bgrscrpt_ioc.core.ca_frames import Oversized

from .answer_on_accept import answer_ended, answer_on_accept
from .client_faults import is_client_fault, log, one_line, reason_of
from .limits import MAX_CHANNELS_VAR, MAX_MONITORS_VAR
from .publish_after_reply import held_publications, publish_held
from .put_lane import LonePut, lone_put

READ_SIZE = 16384
"""Bytes read from a client at a time (EPICS base's MAX_TCP): what bounds its request backlog."""
TURN_BUDGET = 0.005
"""Seconds of a client's requests carried out before the event loop runs the rest."""


def _is_message_class(obj: Any) -> bool:
    return isinstance(obj, type) and issubclass(obj, ca.Message)


REQUESTS = frozenset(
    cls.ID
    for name, cls in vars(ca).items()
    if _is_message_class(cls) and name.endswith("Request")
    if cls.ID is not None
)
"""The command ids a client may send."""
DBR_TYPES = frozenset(int(t) for t in ca.ChannelType)
"""The DBR types that exist (EPICS base's ``dbr_type_is_valid``)."""
_TYPED_REQUESTS = (
    ca.EventAddRequest,
    ca.ReadNotifyRequest,
    ca.ReadRequest,
    ca.WriteRequest,
    ca.WriteNotifyRequest,
)


if TYPE_CHECKING:

    class _CaprotoCircuit:
        """What caproto's asyncio server circuit, next in the MRO, gives the mixin."""

        async def send(self, *commands: Any) -> None: ...
        async def _process_command(self, command: Any) -> list[Any]: ...
        def _get_ids_from_command(self, command: Any) -> tuple[int, int]: ...
        def _get_db_entry_from_command(self, command: Any) -> tuple[Any, Any]: ...

else:
    _CaprotoCircuit = object


class RequestHandling(_CaprotoCircuit):
    """The request side of :class:`~bgrscrpt_ioc.ca.circuit.FlowCircuit` (a mixin).

    Uses the circuit's ``client``, ``circuit``, ``context`` (its ``limits``),
    ``connected``, ``_frames``, ``_sender``, ``_live_ids``, ``fault``, ``close`` and
    ``_cull_subscriptions``.
    """

    # Provided by FlowCircuit and caproto's circuit.
    client: Any
    circuit: Any
    context: Any
    connected: bool
    events_on: Any
    client_hostname: str | None
    client_username: str | None
    _frames: Any
    _sender: Any
    _transport: Any
    _live_ids: set[int]
    _closed: bool

    if TYPE_CHECKING:

        def fault(self, kind: str, message: str) -> bool: ...
        async def _send_buffers(self, *buffers: Any) -> None: ...
        def close(self) -> None: ...
        async def _cull_subscriptions(self, db_entry: Any, func: Any) -> tuple[Any, ...]: ...

    async def recv(self) -> None:
        """Read from the client and carry out every complete request, in order.

        Raises DisconnectedCircuit when the circuit is over.
        """
        try:
            data = await self.client.recv(READ_SIZE)
        except (OSError, CaprotoNetworkError):
            data = b""
        if not data or self._closed:
            raise DisconnectedCircuit()
        await self.handle_read(data)
        if len(data) >= READ_SIZE:
            await asyncio.sleep(0)  # more is waiting: the others first (module docstring)

    async def handle_read(self, data: bytes) -> None:
        """Carry out every complete request of what one read from the client brought, in order."""
        put = lone_put(data) if self._frames.between_messages() else None
        chan = None if put is None else self.circuit.put_channel(put.sid)
        if put is not None and chan is not None:
            await self._batch(self._lone_put(put, chan, data))
            return
        refused = self._frames.feed(data)
        if isinstance(refused, Oversized):
            self.fault(
                "oversized",
                f"sent a message of {refused.message_bytes} bytes (command "
                f"{refused.command}), more than the {refused.limit} this server takes "
                "(EPICS_CA_MAX_ARRAY_BYTES); closed",
            )
        elif refused is not None:
            self.fault(
                "protocol",
                f"sent what is not Channel Access (command {refused.command:#06x}); closed",
            )
        if refused is not None:
            self.close()
            raise DisconnectedCircuit()
        try:
            commands, _ = self.circuit.recv(data)
        except Exception as exc:  # whatever the bytes were, they were not Channel Access
            self.fault("protocol", f"sent what is not Channel Access ({reason_of(exc)}); closed")
            self.close()
            raise DisconnectedCircuit() from None
        await self._batch(self._carry_out(commands))

    async def _batch(self, requests: Coroutine[Any, Any, None]) -> None:
        """Carry out ``requests``; the updates they cause are read after their replies
        are written, and sent by the sender's task (publish_after_reply, sender)."""
        held = held_publications()
        self._sender.hold()
        try:
            await requests
        finally:
            await publish_held(held)
            self._sender.release()

    async def _carry_out(self, commands: list[Any]) -> None:
        turn_started = time.monotonic()
        for command in commands:
            if time.monotonic() - turn_started > TURN_BUDGET:
                await asyncio.sleep(0)  # let the loop run the others (module docstring)
                turn_started = time.monotonic()
                if self._closed:
                    raise DisconnectedCircuit()
            try:
                replies = await self._command_queue_iteration(command)
            except LoopExit:
                self.close()
                raise DisconnectedCircuit() from None
            await self._reply(command, replies)

    async def _reply(self, command: Any, replies: list[Any] | None) -> None:
        """Send ``replies`` (to ``command``), if there are any."""
        if not replies:
            return
        try:
            await self.send(*replies)
        except ca.CaprotoError as exc:
            # caproto's protocol state refused our reply: the state the client's
            # requests left behind does not allow it. Nothing more to say to it.
            self.fault("protocol", f"no reply possible to {type(command).__name__} ({exc})")
            self.close()
            raise DisconnectedCircuit() from None
        self._forget_failed_channels(replies)

    async def _lone_put(self, put: LonePut, chan: Any, data: bytes) -> None:
        """A read holding one put of one value (:mod:`~bgrscrpt_ioc.ca.put_lane`), carried
        out as :meth:`_write` carries any put out, without caproto's message layers.

        A put to a scalar PV is answered as soon as the PV accepts it
        (:mod:`~bgrscrpt_ioc.ca.answer_on_accept`)."""
        db_entry = self.context[chan.name]
        value = extract_data(put.payload, put.data_type, 1)
        answer = None
        if put.notify and db_entry.max_length == 1:
            reply = self.circuit.lone_put_reply(chan, put.ioid, 1)
            answer = answer_on_accept(db_entry, lambda: self._reply_now(reply))
        try:
            failed = await self._put(chan, db_entry, value, put.data_type, None)
        finally:
            answer_ended()
        if answer is not None and answer.sent:
            if failed is not None:  # logged by _put, with its traceback
                log.error("the put to %s was answered as done before it failed", chan.name)
            await self.send_bytes(b"")  # the reply is out: what follows one
            return
        if failed is None:
            if put.notify:
                await self.send_bytes(self.circuit.lone_put_reply(chan, put.ioid, db_entry.length))
            return
        # Refused: answered as caproto's way answers it, from the request caproto
        # makes of the bytes, its protocol state kept as that way keeps it.
        (command,), _ = self.circuit.recv(data)
        self.circuit.process_command(command)
        await self._reply(command, self._put_refusal(command, chan, failed))

    def _forget_failed_channels(self, response: list[Any]) -> None:
        """A channel refused (a name not served, or past the client's bound) is gone.

        caproto keeps each one in the circuit's channels for as long as the circuit
        lives: a client creating channels to names that do not exist grew the IOC
        without bound, and they counted against its bound of channels."""
        for reply in response:
            if isinstance(reply, ca.CreateChFailResponse):
                chan = self.circuit.channels.get(reply.cid)
                if chan is not None and chan.sid is None:
                    del self.circuit.channels[reply.cid]

    async def _command_queue_iteration(self, command: Any) -> list[Any] | None:
        """caproto's handling of one request, with the client's faults kept to one line."""
        if isinstance(command, _TYPED_REQUESTS) and command.header.data_type not in DBR_TYPES:
            # As rsrv: ECA_BADTYPE. caproto met it deep in a conversion (a ValueError
            # from the enum module, logged as this IOC's bug, with its traceback).
            data_type = command.header.data_type
            self.fault(
                "request", f"{type(command).__name__} for DBR type {data_type}: no such type"
            )
            return self._refusal(command, ca.CAStatus.ECA_BADTYPE, f"no DBR type {data_type}")
        limits = self.context.limits
        if isinstance(command, ca.EventAddRequest) and len(self._live_ids) >= limits.max_monitors:
            self.fault(
                "monitors",
                f"holds {len(self._live_ids)} monitors, the most one client may "
                f"({MAX_MONITORS_VAR}); more refused",
            )
            return self._refusal(command, ca.CAStatus.ECA_ALLOCMEM, "too many monitors")
        if isinstance(command, ca.EventAddRequest) and command.subscriptionid in self._live_ids:
            # caproto's protocol state keeps one subscription per id: a second one
            # would take the first one's place there, and its updates would fail.
            self.fault("protocol", f"subscription id {command.subscriptionid} used twice; refused")
            return self._refusal(command, ca.CAStatus.ECA_BADMONID, "subscription id in use")
        try:
            self.circuit.process_command(command)
        except Exception as exc:  # the protocol's state machine refused the request
            cid = self._cid_of(command)
            if cid is not None and isinstance(exc, ca.RemoteProtocolError):
                self.fault("protocol", f"{one_line(exc)}; its channel {cid} was disconnected")
                return [ca.ServerDisconnResponse(cid=cid)]
            self.fault("protocol", f"broke the protocol ({reason_of(exc)}); closed")
            raise LoopExit("protocol error") from None
        if command is ca.DISCONNECTED:
            raise DisconnectedCircuit()
        try:
            return await self._process_command(command)
        except DisconnectedCircuit:
            raise
        except Exception as exc:
            if not self.connected:
                raise LoopExit("closed while the request was carried out") from None
            return self._refuse(command, exc)

    def _refuse(self, command: Any, exc: Exception) -> list[Any]:
        """The error reply to a request that failed, logged in one line or, for a bug, in full."""
        name = self._name_of(command)
        what = f"{type(command).__name__} of {name}"
        if is_client_fault(exc):
            self.fault("request", f"{what} refused: {reason_of(exc)}")
        else:
            log.error("%s from %s failed", what, self.circuit.address, exc_info=exc)
        if isinstance(exc, CaprotoConversionError):
            status = ca.CAStatus.ECA_NOCONVERT
        else:
            status = ca.CAStatus.ECA_INTERNAL
        return self._refusal(command, status, reason_of(exc))

    def _refusal(self, command: Any, status: Any, message: str) -> list[Any]:
        cid = self._cid_of(command)
        if cid is None:
            return []
        return [ca.ErrorResponse(command, cid, status=status, error_message=message)]

    def _cid_of(self, command: Any) -> int | None:
        try:
            cid, _ = self._get_ids_from_command(command)
        except Exception:  # an id the client never had
            return None
        return cid

    def _name_of(self, command: Any) -> str:
        try:
            return str(self.circuit.channels_sid[command.sid].name)
        except Exception:  # no such channel, or no sid in this request
            return "?"

    async def _process_command(self, command: Any) -> list[Any]:
        if (
            isinstance(command, ca.CreateChanRequest)
            and len(self.circuit.channels) > self.context.limits.max_channels
        ):
            # Answered as caproto answers a name it does not serve: the channel
            # the request made in the protocol's state is failed, not kept.
            self.fault(
                "channels",
                f"holds {len(self.circuit.channels) - 1} channels, the most one client may "
                f"({MAX_CHANNELS_VAR}); more refused",
            )
            return [ca.CreateChFailResponse(cid=command.cid)]
        if isinstance(command, ca.WriteRequest | ca.WriteNotifyRequest):
            return await self._write(command)
        if isinstance(command, ca.EventsOffRequest):
            # The client cannot keep up: send nothing until EventsOn, keep the latest.
            self.events_on.clear()
            self._sender.pause()
            return []
        if isinstance(command, ca.EventsOnRequest):
            self.events_on.set()
            self._sender.resume()
            return []
        if isinstance(command, ca.ClearChannelRequest):
            # caproto culls with ``sub.channel == command.sid``, a channel object
            # against a number: never true, so the channel's subscriptions stayed,
            # and their updates were sent for a channel the client had cleared.
            await self._cull_subscriptions(None, lambda sub: sub.channel.sid == command.sid)
        if isinstance(command, ca.EventAddRequest):
            try:
                response = await super()._process_command(command)
                self._live_ids.add(command.subscriptionid)
                return response
            except Exception:
                # caproto records the subscription before its first read: a failed
                # read must not leave it there, failing every publication after.
                await self._cull_subscriptions(
                    None, lambda sub: sub.subscriptionid == command.subscriptionid
                )
                raise
        return await super()._process_command(command)

    async def _write(self, command: Any) -> list[Any]:
        """A put, carried out now; its reply goes out before the updates it causes are built."""
        chan, db_entry = self._get_db_entry_from_command(command)
        failed = await self._put(chan, db_entry, command.data, command.data_type, command.metadata)
        if failed is not None:
            return self._put_refusal(command, chan, failed)
        if isinstance(command, ca.WriteNotifyRequest):
            reply = self.circuit.put_reply(command.ioid, db_entry.length)
            if reply is None:  # caproto's own way, with its checks
                return [chan.write(ioid=command.ioid, status=True, data_count=db_entry.length)]
            await self.send_bytes(reply)
        return []

    async def _put(
        self, chan: Any, db_entry: Any, data: Any, data_type: Any, metadata: Any
    ) -> Exception | None:
        """Write what a client put to ``db_entry`` (if it may); why not, if it was refused."""
        try:
            await db_entry.auth_write(
                self.client_hostname,
                self.client_username,
                data,
                data_type,
                metadata,
                user_address=self.circuit.address,
            )
        except Exception as exc:
            if is_client_fault(exc):
                self.fault("put", f"put to {chan.name} refused: {reason_of(exc)}")
            else:
                log.error("a put to %s failed", chan.name, exc_info=exc)
            return exc
        return None

    @staticmethod
    def _put_refusal(command: Any, chan: Any, exc: Exception) -> list[Any]:
        return [
            ca.ErrorResponse(
                command,
                chan.cid,
                status=ca.CAStatus.ECA_PUTFAIL,
                error_message=reason_of(exc),
            )
        ]

    async def send_bytes(self, data: bytes) -> None:
        """caproto's ``send`` for bytes already made (SteadyCircuit.put_reply)."""
        if self.connected:
            try:
                await self._send_buffers(data)
            except (OSError, CaprotoNetworkError) as ex:  # as caproto's send
                raise DisconnectedCircuit(f"Circuit disconnected: {ex}") from ex

    def _reply_now(self, reply: bytes) -> None:
        """Write ``reply`` at once, unless the circuit is ending (as ``_send_buffers``);
        what follows a reply comes with the next :meth:`send_bytes`."""
        if self.connected and not self._closed and not self._transport.is_closing():
            self._sender.write_reply(reply)
