"""The Channel Access server: caproto 1.3's asyncio server, extended by subclassing.

:class:`FlowContext` is caproto's asyncio ``Context`` with

* update routing that never waits on a client: caproto's ``ChannelData``
  publishes into the context's ``subscription_queue``; here that "queue" is a
  :class:`_Router` that hands each update to the circuits subscribed to it at
  once (:meth:`FlowCircuit.offer <bgrscrpt_ioc.ca.circuit.FlowCircuit.offer>`
  never blocks). caproto instead queued it for one server-wide task that
  awaited room in each circuit's queue in turn, so one client that stopped
  reading froze every monitor of every client; and that task iterated each
  subscription list while awaiting, so a client subscribing or unsubscribing
  meanwhile ended the server ("deque mutated during iteration");
* its TCP handler, which sets TCP_NODELAY on each circuit (caproto creates its
  sockets with protocol 0, so asyncio never does: a reply that follows an
  update waited for the client's delayed ACK, about 40 ms), bounds the
  circuit's send buffer, and ends a circuit in one place whatever ended it;
* :class:`~bgrscrpt_ioc.ca.circuit.FlowCircuit` as its ``CircuitClass``;
* no more connections than its file descriptors allow, accepted without
  asyncio's flood of tracebacks when they run out
  (:class:`~bgrscrpt_ioc.ca.accept.BoundedAccept`).

``run()`` is caproto's own: subclasses and mixins may extend it.

:class:`IocContext`, the IOC's server, is that with the CA port claimed before
anything starts and searches heard on every served interface
(:class:`~bgrscrpt_ioc.ca.discovery.DiscoveryMixin`), and reads EPICS base would
refuse answered as base answers them (:class:`~bgrscrpt_ioc.ca.epics_reads.RefusedReads`).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any

import caproto as ca
from caproto.asyncio import server as _asyncio_server
from caproto.server.common import DisconnectedCircuit

from .accept import BoundedAccept
from .access import CLIENT_ADDRESS
from .circuit import FlowCircuit, wire_size
from .client_faults import ClientFaults
from .discovery import DiscoveryMixin
from .epics_reads import RefusedReads
from .limits import ServerLimits, server_limits
from .sender import HIGH_WATER, LOW_WATER
from .steady_circuit import SteadyCircuit

log = logging.getLogger("bgrscrpt_ioc.ca")


class _Router:
    """Stands where caproto's Context keeps its subscription queue; routes instead of queueing.

    ``ChannelData`` only ever calls ``await queue.put(update)`` and uses the queue
    as a key, so this is all it needs.
    """

    def __init__(self, context: FlowContext) -> None:
        self._context = context

    async def put(self, update: Any) -> None:
        self._context.route(update)


class FlowContext(BoundedAccept, _asyncio_server.Context):
    """caproto's asyncio server Context with per-client flow control (module docstring)."""

    CircuitClass = FlowCircuit

    def __init__(
        self,
        pvdb: dict[str, Any],
        interfaces: list[str] | None = None,
        *,
        limits: ServerLimits | None = None,
    ) -> None:
        super().__init__(pvdb, interfaces)
        self.limits = limits if limits is not None else server_limits()
        self.client_faults = ClientFaults()
        self.subscription_queue = _Router(self)
        self._route_failures = 0

    async def subscription_queue_loop(self) -> None:
        """Nothing to run: updates are routed as they are published (:meth:`route`)."""

    def route(self, update: Any) -> None:
        """Hand one published update to each circuit subscribed to it; never waits.

        This runs for every update of every subscription, inside the publication:
        kept lean on purpose.
        """
        sub_specs, metadata, values, flags, sub = update
        size = wire_size(values)
        if sub is not None:  # the first update of a new subscription, for it alone
            targets: Any = ((sub_specs[0], sub),)
        else:
            targets = (
                (sub_spec, one)
                for sub_spec in sub_specs
                for one in tuple(self.subscriptions.get(sub_spec, ()))
            )
        for sub_spec, one in targets:
            try:
                one.circuit.offer(sub_spec, one, metadata, values, flags, size)
            except Exception:  # a bug: it must not stop the publication for the others
                self._route_failures += 1
                if self._route_failures == 1:
                    log.exception("a monitor update could not be queued; dropped (not repeated)")

    async def tcp_handler(self, client: Any, addr: tuple[str, int] | None) -> None:
        """Serve one client's circuit until it ends, then end it here and only here."""
        transport = client.writer.transport
        if addr is None:  # reset before it could be served
            transport.abort()
            return
        with contextlib.suppress(OSError):
            transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)
        # Access rules read the peer address of the circuit they decide for (this task's).
        CLIENT_ADDRESS.set(addr[0])
        circuit = self.CircuitClass(SteadyCircuit(ca.SERVER, addr, None), client, self)
        self.circuits.add(circuit)
        self.log.info("Connected to new client at %s:%d (total: %d).", *addr, len(self.circuits))
        try:
            await circuit.run()
            while True:
                await circuit.recv()
        except DisconnectedCircuit:
            pass
        except Exception:  # a bug of this IOC: keep its traceback
            log.exception("the circuit of CA client %s:%d failed", *addr)
        finally:
            await circuit._on_disconnect()
            await self.circuit_disconnected(circuit)
        self.log.info("Disconnected from client at %s:%d (total: %d).", *addr, len(self.circuits))


class IocCircuit(RefusedReads, FlowCircuit):
    """The IOC's circuit: flow control, and a read base would refuse gets base's answer."""


class IocContext(DiscoveryMixin, FlowContext):
    """The IOC's Channel Access server: :class:`FlowContext`, on its CA port or not at
    all (``claim_ports`` first), heard by broadcast on every served interface."""

    CircuitClass = IocCircuit


__all__ = ["FlowCircuit", "FlowContext", "IocCircuit", "IocContext"]
