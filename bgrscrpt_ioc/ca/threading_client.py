"""caproto 1.3's threading Channel Access client, made to heal after any circuit loss.

Use :class:`Context` where ``caproto.threading.client.Context`` would be used
(the live plot's monitors, the ``bgrscrpt`` CLI, genie_python's channels). The
threading client does reconnect after an unresponsive server, unlike the
asyncio one (:mod:`bgrscrpt_ioc.ca.client`); what it gets wrong:

* **One circuit that fails to connect stops every later connection.** The
  context's search-results thread opens each circuit itself. A server that
  refuses the connection, resets it, or does not complete the handshake in
  time raises out of that thread and ends it: from then on no PV of the
  context connects, whatever answers its searches, until the process
  restarts. Here a failed circuit sends its PVs back to the search and the
  thread goes on.
* **A circuit is opened with no connect timeout**, in that same thread: a
  server whose searches are answered but whose TCP port is filtered holds up
  every other PV of the context for the kernel's SYN timeout (about two
  minutes) per attempt. Here the connect is bounded like the handshake.
* **A server that drops every circuit makes the client spin**, and a circuit
  dropped for a protocol error is never searched for again: as in the asyncio
  module, circuits that end young are retried after a growing delay
  (:mod:`bgrscrpt_ioc.core.reconnect`), and only the user's own disconnect
  leaves PVs unconnected.
* **A reset circuit is handed old bytes.** After a connection reset, the
  selector thread passes the circuit the bytes of its previous read again
  (a variable left over from the last turn of its loop): old monitor updates
  processed twice, and a traceback in the log. Here a dead circuit ignores them.
* **One name it cannot search ends every search.** A name caproto's search
  request refuses (a record part over 59 characters, ``None``, a number)
  raises in the thread that resends searches: no PV of the context connects
  again. Here ``get_pvs`` refuses such a name in the caller (:mod:`.names`).
* **A refused read or write waits for its timeout.** The server's error reply
  to a read or write that is waited for is ignored: the caller waits out its
  whole timeout (genie_python's ``set_pv(..., wait=True)`` has none: for ever),
  and gets a timeout instead of the refusal. Here the error reply is the
  answer, at once: ``read``/``write`` return the ``ErrorResponse``, a callback
  is called with it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from queue import Empty
from typing import Any

import caproto as ca
from caproto.threading import client as _stock

from ..core.reconnect import CircuitRetry
from .names import check_names
from .refused import take_refused

log = logging.getLogger("bgrscrpt_ioc.ca.client")

PV = _stock.PV


class VirtualCircuitManager(_stock.VirtualCircuitManager):
    """A circuit that connects with a deadline and whose end, however it comes,
    sends its PVs back to the search."""

    def __init__(
        self, context: Context, circuit: ca.VirtualCircuit, selector: Any, timeout: Any = None
    ):
        # caproto's __init__ with a bounded connect, and cleaned up when it fails.
        if timeout is None:
            timeout = _stock.common.GLOBAL_DEFAULT_TIMEOUT
        self.context = context
        self.circuit = circuit
        self.log = circuit.log
        self.channels: dict[int, Any] = {}
        self.pvs: dict[int, Any] = {}
        self.ioids: dict[int, Any] = {}
        self.subscriptions: dict[int, Any] = {}
        self.socket: socket.socket | None = None
        self.selector = selector
        self.user_callback_executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=context.max_workers, thread_name_prefix="user-callback-executor"
        )
        self.last_tcp_receipt: float | None = None
        self.all_created_pvnames: list[str] = []
        self.dead = threading.Event()
        self._ioid_counter = ca.ThreadsafeCounter()
        self._subscriptionid_counter = ca.ThreadsafeCounter()
        self._ready = threading.Event()
        self._tags: dict[str, Any] = {}
        self.connected_at: float | None = None
        self.served = False  # the server connected a channel on this circuit
        # Taken both to join PVs to this circuit and to end it: a PV joins a live
        # circuit (and its end takes the PV along) or finds it ended (and goes
        # back to the search itself), never both and never neither.
        self.membership = threading.Lock()
        self.ended = False
        if circuit.states[ca.SERVER] is not ca.IDLE:
            raise ca.CaprotoRuntimeError(f"Cannot connect. States are {circuit.states}")
        try:
            self._connect(timeout)
        except BaseException:
            self._disconnected(reconnect=False)
            self.user_callback_executor.shutdown(wait=False)
            raise
        self.connected_at = time.monotonic()

    def _connect(self, timeout: float | None) -> None:
        sock = socket.create_connection(self.circuit.address, timeout=timeout)
        sock.settimeout(None)
        self.socket = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.circuit.our_address = sock.getsockname()
        self._tags = {
            "their_address": self.circuit.address,
            "our_address": self.circuit.our_address,
            "direction": "<<<---",
            "role": repr(self.circuit.our_role),
        }
        self.selector.add_socket(sock, self)
        self.send(
            ca.VersionRequest(self.circuit.priority, ca.DEFAULT_PROTOCOL_VERSION),
            ca.HostNameRequest(self.context.host_name),
            ca.ClientNameRequest(self.context.client_name),
            extra=self._tags,
        )
        # Old servers send no VersionResponse: nothing to wait for.
        if self.context.broadcaster.server_protocol_versions[self.circuit.address] < 12:
            self._ready.set()
        if not self._ready.wait(timeout=timeout):
            host, port = self.circuit.address
            raise ca.CaprotoTimeoutError(
                f"Circuit with server at {host}:{port} did not connect within "
                f"{float(timeout or 0):.3}-second timeout."
            )

    def _disconnected(self, *, reconnect: bool = True) -> None:
        with self.membership:
            if self.ended or self.dead.is_set():
                return
            self.ended = True
            keys = [(chan.name, chan.circuit.priority) for chan in self.channels.values()]
        lived = None if self.connected_at is None else time.monotonic() - self.connected_at
        if self.connected:
            # Ended without an EOF (given up on): let the circuit's and channels'
            # states say so, as an EOF would.
            self.circuit.process_command(ca.DISCONNECTED)
        super()._disconnected(reconnect=False)
        context: Context = self.context
        if reconnect and not context.closing:
            # Counted even with no channels yet: a circuit reset before its PVs
            # joined it sends them back through _connect_found, which waits the
            # delay counted here (uncounted, a server that drops every circuit
            # at once would be retried in a tight loop).
            delay = context.retry.ended(self.circuit.address, lived, served=self.served)
            if keys and delay > 0:
                context.reconnect_later(keys, delay)
            elif keys:
                context.reconnect(keys)

    def received(self, bytes_recv: bytes, address: Any) -> Any:
        if bytes_recv and self.dead.is_set():
            # After a connection reset, caproto's selector hands the circuit the
            # bytes of its previous read again: old news, for a circuit that is gone.
            return ca.DISCONNECTED
        return super().received(bytes_recv, address)

    def _process_command(self, command: Any) -> None:
        if isinstance(command, ca.ErrorResponse):
            self._answer_with_error(command)
        elif isinstance(command, ca.CreateChanResponse):
            self.served = True
        super()._process_command(command)

    def _answer_with_error(self, error: Any) -> None:
        """The server refused a read or write that is waited for: its answer is the
        error reply, not a timeout (:mod:`.refused`)."""
        ioid_info = take_refused(self.ioids, error)
        callback = ioid_info.get("callback") if ioid_info is not None else None
        if callback is not None:
            with contextlib.suppress(RuntimeError):  # shutting down: nobody to tell
                self.user_callback_executor.submit(callback, error)

    def disconnect(self) -> None:
        if self.context.closing:
            super().disconnect()
        else:
            # caproto giving up on the circuit (a protocol error): a circuit loss,
            # not the user closing the client.
            self._disconnected()


class Context(_stock.Context):
    """caproto's threading client context with circuits that heal (see the module)."""

    def __init__(self, broadcaster: Any = None, **kwargs: Any):
        self.retry = CircuitRetry()
        self._retry_lock = threading.Lock()
        super().__init__(broadcaster, **kwargs)

    @property
    def closing(self) -> bool:
        """The user is disconnecting this context (or has)."""
        return bool(getattr(self, "_user_disconnected", False))

    def get_pvs(self, *names: Any, **kwargs: Any) -> Any:
        """As caproto's; a name no search can carry raises here (``names.check_names``)
        instead of ending the search thread, and with it every later connection."""
        check_names(names)
        return super().get_pvs(*names, **kwargs)

    def get_circuit_manager(self, address: Any, priority: int) -> VirtualCircuitManager:
        """As caproto's, with this module's circuit manager; raises if it cannot connect."""
        with self._lock_during_get_circuit_manager:
            cm = self.circuit_managers.get((address, priority), None)
            if cm is None or cm.ended or cm.dead.is_set():
                version = self.broadcaster.server_protocol_versions[address]
                circuit = ca.VirtualCircuit(
                    our_role=ca.CLIENT, address=address, priority=priority, protocol_version=version
                )
                cm = VirtualCircuitManager(self, circuit, self.selector)
                self.circuit_managers[(address, priority)] = cm
            return cm  # type: ignore[no-any-return]

    def reconnect(self, keys: Iterable[tuple[str, int]]) -> None:
        """Search again for the PVs of a circuit that ended (those still in use)."""
        with self.pv_cache_lock:
            keys = [key for key in keys if key in self.pvs]
        if keys and not self.closing:
            super().reconnect(keys)

    def reconnect_later(self, keys: list[tuple[str, int]], delay: float) -> None:
        timer = threading.Timer(delay, self.reconnect, args=(keys,))
        timer.daemon = True
        timer.start()

    def _process_search_results_loop(self) -> None:
        # caproto's loop, which must never end while the context is open.
        while not self._close_event.is_set():
            try:
                address, names = self._search_results_queue.get(timeout=0.5)
            except Empty:
                continue
            try:
                self._connect_found(address, names)
            except Exception:
                log.exception("connecting %d PV(s) found at %s:%d", len(names), *address)

    def _connect_found(self, address: Any, names: Iterable[str]) -> None:
        """Open (or reuse) a circuit to ``address`` for the PVs found there; a circuit
        that cannot be opened sends them back to the search."""
        grouped: dict[Any, list[Any]] = defaultdict(list)
        failed: set[int] = set()  # priorities whose circuit could not be opened
        retry: list[tuple[str, int]] = []
        for name in names:
            with self.pv_cache_lock:
                pvs = self.pvs_needing_circuits.pop(name, set())
            for pv in pvs:
                if pv.priority not in failed:
                    before = self.retry.failures(address)
                    try:
                        cm = self.get_circuit_manager(address, pv.priority)
                    except (OSError, ca.CaprotoError) as exc:
                        log.log(
                            logging.INFO if not before else logging.DEBUG,
                            "circuit to %s:%d failed: %s",
                            *address,
                            exc,
                        )
                        if self.retry.failures(address) == before:
                            # Not yet counted by the circuit's own end (a reset
                            # during the handshake is): count it once.
                            self.retry.ended(address, None)
                        failed.add(pv.priority)
                if pv.priority in failed:
                    retry.append((pv.name, pv.priority))
                    continue
                with cm.membership:
                    if cm.ended:
                        # It ended before this PV joined it: its end did not take it along.
                        retry.append((pv.name, pv.priority))
                        continue
                    cid = cm.circuit.new_channel_id()
                    chan = ca.ClientChannel(name, cm.circuit, cid=cid)
                    pv.circuit_manager = cm
                    cm.channels[cid] = chan
                    cm.pvs[cid] = pv
                grouped[cm].append(chan)
                pv.circuit_ready.set()
        for cm, channels in grouped.items():
            # An OSError: the circuit is dying, and its end sends these PVs back to the search.
            with contextlib.suppress(OSError):
                cm.send(*(chan.create() for chan in channels))
        if retry:
            self.reconnect_later(retry, self.retry.delay(address))
