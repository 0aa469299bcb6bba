"""caproto's protocol circuit, with its steady-state commands checked in a few lookups.

caproto runs every command through two state machines (the circuit's and the
channel's, for both roles) and builds a logging dict for every command it sends,
whether or not debug logging is on. For the commands of a connected channel's
steady state, a put's request and reply and a monitor update, that is about a
third of the Python work of a ``caput wait=True`` round trip, and every one of
those transitions is CONNECTED → CONNECTED: nothing changes but caproto's ioid
table.

:class:`SteadyCircuit` checks exactly what caproto checks for those commands
(the channel and circuit connected in both roles, the channel known by its sid,
ioid or subscription id, the update's type and count as subscribed) and keeps
the same tables. Anything else, or any check failing, goes to caproto's own
``_process_command``, which raises as it always did.
"""

from __future__ import annotations

import logging
from typing import Any

import caproto as ca
from caproto._headers import WriteNotifyResponseHeader
from caproto._status import ensure_eca_value
from caproto._utils import CONNECTED

_EVENT_ADD_RESPONSE = ca.EventAddResponse
_WRITE_NOTIFY_RESPONSE = ca.WriteNotifyResponse
_WRITE_NOTIFY_REQUEST = ca.WriteNotifyRequest


def _connected(chan: Any) -> bool:
    """Both roles of the channel and of its circuit are CONNECTED: no transition can fire."""
    states = chan.states
    circuit_states = states.circuit_state.states
    return (
        states.states[ca.CLIENT] is CONNECTED
        and states.states[ca.SERVER] is CONNECTED
        and circuit_states[ca.CLIENT] is CONNECTED
        and circuit_states[ca.SERVER] is CONNECTED
    )


class SteadyCircuit(ca.VirtualCircuit):
    """A server's ``caproto.VirtualCircuit`` (see the module docstring)."""

    def send(self, *commands: Any, extra: Any = None) -> list[Any]:
        if self.log.isEnabledFor(logging.DEBUG):
            return super().send(*commands, extra=extra)  # type: ignore[no-any-return]
        buffers: list[Any] = []
        for command in commands:
            self._process_command(self.our_role, command)
            buffers.append(memoryview(command.header))
            buffers.extend(command.buffers)
        return buffers

    def put_reply(self, ioid: int, data_count: int, status: Any = True) -> bytes | None:
        """The reply to the put ``ioid``, the bytes caproto's
        ``ServerChannel.write`` and ``send`` make of it, with caproto's tables kept as
        they keep them.

        None when caproto's own way must run: a put it does not know or a channel
        not connected (it raises), or debug logging on (it logs every message).
        """
        if self.log.isEnabledFor(logging.DEBUG):
            return None
        chan = self._ioids.get(ioid)
        if chan is None or not _connected(chan):
            return None
        del self._ioids[ioid]
        return self.lone_put_reply(chan, ioid, data_count, status)

    def put_channel(self, sid: int) -> Any:
        """The channel a put to ``sid`` writes to, if caproto's protocol state has
        nothing to check or keep for it (the channel connected in both roles); None
        when caproto's way must run (it raises, or logs every message)."""
        if self.log.isEnabledFor(logging.DEBUG):
            return None
        chan = self.channels_sid.get(sid)
        return chan if chan is not None and _connected(chan) else None

    @staticmethod
    def lone_put_reply(chan: Any, ioid: int, data_count: int, status: Any = True) -> bytes:
        """The reply to the put ``ioid`` to ``chan``, as caproto makes it: for a put
        of :meth:`put_channel`'s, which caproto's tables never saw."""
        return bytes(
            WriteNotifyResponseHeader(
                chan.native_data_type, data_count, ensure_eca_value(status), ioid
            )
        )

    def _process_command(self, role: Any, command: Any) -> None:
        kind = type(command)
        if role is self.our_role:
            if kind is _EVENT_ADD_RESPONSE and self._update_ok(command):
                return
            if kind is _WRITE_NOTIFY_RESPONSE and self._reply_ok(command):
                return
        elif kind is _WRITE_NOTIFY_REQUEST and self._request_ok(command):
            return
        super()._process_command(role, command)

    def _request_ok(self, command: Any) -> bool:
        """A put's request caproto would pass; its ioid kept for the reply, as caproto does."""
        chan = self.channels_sid.get(command.sid)
        if chan is None or not _connected(chan):
            return False
        self._ioids[command.ioid] = chan
        return True

    def _reply_ok(self, command: Any) -> bool:
        """A put's reply caproto would pass; its ioid forgotten, as caproto does."""
        chan = self._ioids.get(command.ioid)
        if chan is None or not _connected(chan):
            return False
        del self._ioids[command.ioid]
        return True

    def _update_ok(self, command: Any) -> bool:
        """A monitor update caproto would pass without changing any state."""
        subscriptionid = command.subscriptionid
        if subscriptionid in self.event_cancel_commands:
            return False  # caproto may take an empty update for the cancel's reply
        event_add = self.event_add_commands.get(subscriptionid)
        if event_add is None or event_add.data_type != command.data_type:
            return False
        if event_add.data_count > 0 and event_add.data_count != command.data_count:
            return False
        chan = self.channels_sid.get(event_add.sid)
        return chan is not None and _connected(chan)
