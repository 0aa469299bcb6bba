"""caproto 1.3's asyncio Channel Access client, made to heal after any circuit loss.

Use :class:`Context` where ``caproto.asyncio.client.Context`` would be used; it
chooses the circuit manager below. What stock caproto gets wrong:

* **An unresponsive server is never reconnected.** When a server has been
  silent for ``EPICS_CA_CONN_TMO`` and does not answer an echo, the
  broadcaster's ``_check_for_unresponsive_servers_loop`` calls the circuit
  manager's ``disconnect()``: the path for a user closing the client. It
  drops the circuit without searching again, so its PVs never reconnect (the
  threading client calls ``_disconnected()`` here, which does). Worse,
  ``disconnect()`` shuts the circuit's callback executor down right after
  queueing the PVs' "disconnected" callbacks, so they never run: the
  application goes on believing the PVs connected, and so does ``PV.connected``
  (the circuit's state machine is never told). The same happens when a
  circuit is dropped for a protocol error. Here a circuit manager's
  ``disconnect()`` acts as the user's only while its context is closing;
  otherwise it is a circuit loss like any other: the PVs are told, and
  searched for again.
* **A circuit that fails to connect strands its PVs.** A refused or timed-out
  connection, or a server that never completes the handshake, ends the
  circuit's connect task with an exception that nobody sees; the manager is
  never marked dead, and the PVs assigned to it wait for ever. Here such a
  circuit ends like any other and its PVs are searched for again.
* **A server that drops every circuit makes the client spin.** Every circuit
  loss searches again at once; a server that answers searches but refuses or
  resets every circuit has the client reconnecting as fast as the loop turns.
  Here a circuit that ended young is retried after a growing delay
  (:mod:`bgrscrpt_ioc.core.reconnect`).
* **Cancelled searches go on.** ``SearchResults.cancel`` looks the search up
  by the wrong key and cancels nothing, and every search ever made is kept:
  a PV searched for again and again (below) would pile up searches that are
  all resent for ever. Here ``cancel`` cancels, and old searches are let go.
  (``invalidate_by_name`` also raises KeyError when called twice for a name.)
* **A name with an open channel cannot be searched for again.** The search
  cache subtracts its marker for an open channel from the time (TypeError):
  any search for such a name failed, so a watched PV whose channel opened but
  which never sent a value could not be re-created.
* **Every circuit leaks a task.** Each circuit's callback executor keeps a task
  waiting for callbacks for ever, also after the circuit died. Here callbacks
  run in a task that exists only while some are queued.
* **One name it cannot search ends every search.** A name caproto's search
  request refuses (a record part over 59 characters, a non-string) raises in
  the task that resends searches: no PV of the context connects again. Here
  ``get_pvs`` refuses such a name in the caller (:mod:`.names`).
* **A refused read or write waits for its timeout.** The server's error reply
  (ECA_PUTFAIL for a put its record refuses or its access rules forbid) to a
  read or write that is waited for is ignored: the caller waits out its whole
  timeout and gets a timeout instead of the server's words. Here the error
  reply is the answer, at once, as in the threading module: ``read``/``write``
  return the ``ErrorResponse`` (:func:`refusal` gives its text), a callback is
  called with it.
* **Closing a context can hang for ever.** The broadcaster's ``disconnect()``
  cancels its tasks once and waits for them without a bound; Python 3.11's
  ``asyncio.wait_for`` swallows a cancellation that arrives as its wait
  completes (a search answered, ``search_now``), and the task, and whoever
  closes the context, then wait for ever. Here its tasks are cancelled until
  they end (:func:`~bgrscrpt_ioc.aio.cancel_and_wait`).

:meth:`Context.recreate` gives a PV that has gone silent a fresh start.
:func:`why_not_connected` says, in words, why a PV is not connected (caproto
keeps no reason: "connection refused", "no route to host", "unresponsive
server" are known only inside the circuit that ended).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import functools
import inspect
import itertools
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

import caproto as ca
from caproto import _constants
from caproto.asyncio import client as _stock
from caproto.client import common as _common
from caproto.client import search_results as _search_results

from ..aio import cancel_and_wait
from ..core.reconnect import CircuitRetry
from .names import check_names
from .refused import take_refused

log = logging.getLogger("bgrscrpt_ioc.ca.client")

PV = _stock.PV

NO_ANSWER = "no server answers its search"
"""Why a PV is not connected when no server has answered its search."""

SEARCHES_KEPT = 4096
"""Searches remembered after their answer (to recognise a second server answering)."""


class SearchResults(_search_results.SearchResults):
    """caproto's search bookkeeping, with ``cancel`` that cancels and a bounded memory."""

    def cancel(self, *names: str) -> None:
        """Stop searching for ``names``."""
        wanted = set(names)
        with self._lock:
            for name in wanted:
                self._searches_by_name.pop(name, None)
            for cid, item in list(self._unanswered_searches.items()):
                if item.name in wanted:
                    del self._unanswered_searches[cid]
                    self._searches.pop(cid, None)

    def search(self, *names: str, results_queue: Any, retirement_deadline: float) -> None:
        with self._lock:
            super().search(
                *names, results_queue=results_queue, retirement_deadline=retirement_deadline
            )
            excess = len(self._searches) - SEARCHES_KEPT
            if excess > 0:
                # The oldest answered ones go, a quarter at a time; unanswered ones stay.
                done = (cid for cid in self._searches if cid not in self._unanswered_searches)
                for cid in list(itertools.islice(done, excess + SEARCHES_KEPT // 4)):
                    del self._searches[cid]

    def get_cached_search_result(
        self, name: str, *, threshold: float = _constants.STALE_SEARCH_EXPIRATION
    ) -> Any:
        """Where ``name`` is (an open channel's address first); KeyError if unknown or stale.

        caproto's computed ``now - timestamp`` before it checked whether the
        timestamp was its marker for an open channel: TypeError.
        """
        with self._lock:
            entry = self.name_to_addrs[name]
            now = time.monotonic()
            found, found_stamp = None, None
            for addr, stamp in list(entry.items()):
                if stamp is _common.VALID_CHANNEL_MARKER or now - stamp < threshold:
                    if found_stamp is not _common.VALID_CHANNEL_MARKER:
                        found, found_stamp = addr, stamp
                else:
                    del entry[addr]  # an expired result
            if found is None:
                raise ca.CaprotoKeyError(f"{name!r}: stale search result")
            return found

    def invalidate_by_name(self, name: str) -> None:
        """Forget where ``name`` was found (caproto's raises KeyError on a second call)."""
        with self._lock:
            for addr in self.name_to_addrs.pop(name, {}):
                self.addr_to_names[addr].discard(name)


class SharedBroadcaster(_stock.SharedBroadcaster):
    """caproto's asyncio broadcaster with this module's search bookkeeping."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.results = SearchResults()

    def search_now(self) -> None:
        """Send every unanswered search again now, and again soon (caproto backs
        its retries off to every 5 s, and after 8 minutes to every minute)."""
        self._search_now.set()

    async def disconnect(self) -> None:
        """caproto's, with its tasks cancelled until they have ended (module docstring)."""
        self._registration_last_sent = 0
        tasks = list(self._tasks.tasks)
        self._tasks.tasks.clear()
        await cancel_and_wait(tasks, what="the CA client's broadcaster", logger=log)
        self.udp_sock = None
        protocol = getattr(self, "protocol", None)  # set once its socket was made
        if protocol is not None and protocol.transport is not None:
            try:
                protocol.transport.close()
            except OSError:
                log.exception("closing the CA client's UDP socket failed")


class CallbackRunner:
    """Runs one circuit's user callbacks in the order they came, as caproto's
    executor does (coroutine functions awaited, plain ones in the default thread
    pool), with a task only while callbacks are waiting."""

    def __init__(self, log: Any):
        self.log = log
        self._loop = asyncio.get_running_loop()
        self._thread = threading.get_ident()
        self._queue: collections.deque[tuple[Any, tuple[Any, ...], dict[str, Any]]] = (
            collections.deque()
        )
        self._task: asyncio.Task[None] | None = None

    def submit(self, callback: Any, *args: Any, **kwargs: Any) -> None:
        if threading.get_ident() != self._thread:
            self._loop.call_soon_threadsafe(
                functools.partial(self.submit, callback, *args, **kwargs)
            )
            return
        self._queue.append((callback, args, kwargs))
        if self._task is None:
            self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            while self._queue:
                callback, args, kwargs = self._queue.popleft()
                try:
                    if inspect.iscoroutinefunction(callback):
                        await callback(*args, **kwargs)
                    else:
                        self._loop.run_in_executor(
                            None, functools.partial(callback, *args, **kwargs)
                        )
                except Exception:
                    self.log.exception("Callback failure")
        finally:
            self._task = None

    async def shutdown(self) -> None:
        """Drop what is still queued (the client is closing)."""
        self._queue.clear()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()


class VirtualCircuitManager(_stock.VirtualCircuitManager):
    """A circuit whose end, however it comes, sends its PVs back to the search."""

    user_callback_executor: Any  # caproto's, replaced by a CallbackRunner in __init__

    def __init__(self, context: Context, circuit: ca.VirtualCircuit, timeout: Any = None):
        if timeout is None:
            timeout = _stock.common.GLOBAL_DEFAULT_TIMEOUT
        super().__init__(context, circuit, timeout=timeout)
        stock_executor = self.user_callback_executor
        self.user_callback_executor = CallbackRunner(self.log)
        for task in list(stock_executor.tasks.tasks):
            task.cancel()
        self.connected_at: float | None = None
        self.served = False  # the server connected a channel on this circuit
        self.loss: str | None = None  # why the circuit ended, in words (once it has)

    async def _process_command(self, command: Any) -> Any:
        if isinstance(command, ca.ErrorResponse):
            self._answer_with_error(command)
        elif isinstance(command, ca.CreateChanResponse):
            self.served = True
            chan = self.circuit.channels.get(command.cid)
            if chan is not None:  # connected again: its last loss is history
                self.context.losses.pop((chan.name, self.circuit.priority), None)
        return await super()._process_command(command)

    def _answer_with_error(self, error: Any) -> None:
        """The server refused a read or write that is waited for: its answer is the
        error reply, not a timeout (:mod:`.refused`)."""
        ioid_info = take_refused(self.ioids, error)
        callback = ioid_info.get("callback") if ioid_info is not None else None
        if callback is not None:
            self.user_callback_executor.submit(callback, error)

    async def _connect(self, timeout: Any) -> None:
        try:
            await super()._connect(timeout)
        except (OSError, TimeoutError, ca.CaprotoError) as exc:
            host, port = self.circuit.address
            self.loss = f"cannot connect to {host}:{port}: {network_reason(exc)}"
            first = not self.context.retry.failures(self.circuit.address)
            log.log(
                logging.INFO if first else logging.DEBUG,  # once per run of failures
                "circuit to %s:%d failed: %s",
                host,
                port,
                exc or type(exc).__name__,
            )
            await self._disconnected()
            return
        self.connected_at = time.monotonic()

    async def _disconnected(self, *, reconnect: bool = True) -> None:
        if self.dead.is_set():
            return
        lived = None if self.connected_at is None else time.monotonic() - self.connected_at
        keys = [(chan.name, chan.circuit.priority) for chan in self.channels.values()]
        if self.connected:
            # Ended without an EOF (given up on, or failed half-way): caproto's
            # _disconnected leaves the circuit's and channels' states CONNECTED.
            self.circuit.process_command(ca.DISCONNECTED)
        await super()._disconnected(reconnect=False)
        current = asyncio.current_task()
        for task in list(self._tasks.tasks):  # e.g. a wait for a handshake that never came
            if task is not current:
                task.cancel()
        context: Context = self.context
        if self.loss:
            for key in keys:
                context.losses[key] = self.loss
        if reconnect and keys and not context.closing:
            delay = context.retry.ended(self.circuit.address, lived, served=self.served)
            if delay > 0:
                context.reconnect_later(keys, delay)
            else:
                await context.reconnect(keys)

    async def _transport_receive_loop(self, transport: Any) -> None:
        await super()._transport_receive_loop(_NotingTransport(transport, self))

    async def disconnect(self) -> None:
        if self.context.closing:
            await super().disconnect()
        else:
            # caproto giving up on the circuit (an unresponsive server, a
            # protocol error): a circuit loss, not the user closing the client.
            if self.loss is None:
                host, port = self.circuit.address
                self.loss = f"unresponsive server at {host}:{port} (no answer to an echo)"
            await self._disconnected()


class _NotingTransport:
    """A circuit's transport that notes on its manager why the circuit ended."""

    def __init__(self, transport: Any, manager: VirtualCircuitManager):
        self._transport = transport
        self._manager = manager

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    async def recv(self, nbytes: int = 4096) -> bytes:
        host, port = self._manager.circuit.address
        try:
            data: bytes = await self._transport.recv(nbytes)
        except ca.CaprotoNetworkError as exc:
            if self._manager.loss is None:
                self._manager.loss = f"connection to {host}:{port} lost: {network_reason(exc)}"
            raise
        if not data and self._manager.loss is None:
            self._manager.loss = f"the server at {host}:{port} closed the connection"
        return data


class Context(_stock.Context):
    """caproto's asyncio client context with circuits that heal (see the module)."""

    def __init__(self, broadcaster: Any = None, **kwargs: Any):
        super().__init__(broadcaster if broadcaster is not None else SharedBroadcaster(), **kwargs)
        self.retry = CircuitRetry()
        self.losses: dict[tuple[str, int], str] = {}
        """(name, priority) -> why the circuit a PV was last on ended (kept while the
        PV searches again, when it has no circuit to ask)."""

    @property
    def closing(self) -> bool:
        """The user is disconnecting this context (or has)."""
        return bool(self._user_disconnected)

    async def get_pvs(self, *names: Any, **kwargs: Any) -> Any:
        """As caproto's; a name no search can carry raises here (``names.check_names``)
        instead of ending the search task, and with it every later connection."""
        check_names(names)
        return await super().get_pvs(*names, **kwargs)

    def get_circuit_manager(self, address: Any, priority: int) -> VirtualCircuitManager:
        """As caproto's, with this module's circuit manager."""
        with self._lock_during_get_circuit_manager:
            cm = self.circuit_managers.get((address, priority), None)
            if cm is None or cm.dead.is_set():
                version = self.broadcaster.server_protocol_versions[address]
                circuit = ca.VirtualCircuit(
                    our_role=ca.CLIENT, address=address, priority=priority, protocol_version=version
                )
                cm = VirtualCircuitManager(self, circuit)
                self.circuit_managers[(address, priority)] = cm
            return cm  # type: ignore[no-any-return]

    async def reconnect(self, keys: Iterable[tuple[str, int]]) -> None:
        """Search again for the PVs of a circuit that ended (those still in use)."""
        with self.pv_cache_lock:
            keys = [key for key in keys if key in self.pvs]
        if keys and not self.closing:
            await super().reconnect(keys)

    def reconnect_later(self, keys: list[tuple[str, int]], delay: float) -> None:
        async def later() -> None:
            await asyncio.sleep(delay)
            await self.reconnect(keys)

        self._tasks.create(later())

    async def recreate(self, pv: Any) -> Any:
        """Forget ``pv`` and return a new PV object for its name, searched for afresh.

        For a PV that has not connected for longer than it should: whatever
        stranded it (a search given up on, a circuit that never finished) is
        left behind with the old object. The old object gets no callbacks from
        here on that its user should act on: remove its subscriptions' callbacks
        and ignore it. Its connection callbacks are carried over.
        """
        key = (pv.name, pv.priority)
        with self.pv_cache_lock:
            if self.pvs.get(key) is pv:
                del self.pvs[key]
            needing = self.pvs_needing_circuits.get(pv.name)
            if needing is not None:
                needing.discard(pv)
                if not needing:
                    del self.pvs_needing_circuits[pv.name]
        if pv.name not in self.pvs_needing_circuits:
            self.broadcaster.results.cancel(pv.name)
        await _release_channel(pv)
        # Searched for afresh: not sent back to the server whose channel went silent.
        self.broadcaster.results.invalidate_by_name(pv.name)
        callbacks = [ref() for ref in pv.connection_state_callback.callbacks.values()]
        pv.connection_state_callback.callbacks.clear()
        (new,) = await self.get_pvs(pv.name, priority=pv.priority, timeout=pv._timeout)
        for callback in callbacks:
            if callback is not None:
                new.connection_state_callback.add_callback(callback)
        return new


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "connection refused",
    errno.EHOSTUNREACH: "no route to host",
    errno.ENETUNREACH: "network unreachable",
    errno.ECONNRESET: "connection reset",
    errno.ETIMEDOUT: "connection timed out",
    errno.EPIPE: "connection broken",
}


def network_reason(exc: BaseException) -> str:
    """A network error (an OSError, or caproto's error wrapping one) in a few words."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, OSError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, TimeoutError) or (cause is None and "timeout" in str(exc).lower()):
        return "no answer (timed out)"
    if isinstance(cause, OSError):
        words = _ERRNO_WORDS.get(cause.errno or 0)
        return words or (cause.strerror or str(cause) or type(cause).__name__).lower()
    return str(exc) or type(exc).__name__


def why_not_connected(pv: Any) -> str:
    """Why ``pv`` is not connected, in words ("" when it is, or nothing is known)."""
    if pv.connected:
        return ""
    manager = pv.circuit_manager
    if manager is None:  # searching again: why its last circuit ended, if it had one
        loss = getattr(pv.context, "losses", {}).get((pv.name, pv.priority))
        return f"{loss}; {NO_ANSWER} since" if loss else NO_ANSWER
    loss = getattr(manager, "loss", None)
    if loss:
        return str(loss)
    host, port = manager.circuit.address
    return f"connecting to {host}:{port}"


def refusal(response: Any) -> str | None:
    """The server's words when ``response`` (to a read or write) is its refusal, else None."""
    if not isinstance(response, ca.ErrorResponse):
        return None
    text = bytes(response.error_message).split(b"\0", 1)[0].decode("utf-8", "replace").strip()
    return text or str(response.status.description)


async def _release_channel(pv: Any) -> None:
    """Close an old PV's channel if it is open (best effort: the circuit may be dying)."""
    cm, chan = pv.circuit_manager, pv.channel
    if cm is None or chan is None or not cm.connected:
        return
    if chan.states[ca.CLIENT] is not ca.CONNECTED:
        return
    try:
        await cm.send(chan.clear(), extra={"pv": pv.name})
    except Exception as exc:  # a circuit dying under us has closed the channel anyway
        log.debug("closing the old channel of %s: %s", pv.name, exc)
