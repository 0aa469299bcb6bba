"""The IOC's side of the keeper: nothing a script starts outlives the IOC or escapes it.

The keeper (``keeper.py``) is a small process in its own session that starts
every script for the IOC, is their child subreaper, and kills every process of
the IOC's scripts (and removes their cgroups) when its socket to the IOC closes,
whatever ended the IOC, SIGKILL included. This class starts it, asks it to spawn
and to signal slots, and hands each run's exit to whoever spawned it.

If the keeper itself dies, its scripts die with it (PR_SET_PDEATHSIG); this
side then kills what they left (by cgroup, or by marker), reports each run as
killed, and starts a new keeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import cgroups, proctree
from .keeper import MAX_MESSAGE

log = logging.getLogger(__name__)

KEEPER = Path(__file__).with_name("keeper.py")
_START_TIMEOUT = 10.0
_REPLY_TIMEOUT = 5.0
_CLOSE_TIMEOUT = 10.0


@dataclass
class _Start:
    """A spawn request the keeper has not answered yet."""

    slot: str
    future: asyncio.Future[int]
    on_exit: Callable[[int], None]


@dataclass(frozen=True)
class KeeperConfig:
    """What the keeper must know: the IOC's instance id (for the slot marker) and,
    with cgroups, each slot's cgroup and the IOC's cgroup above them."""

    instance: str
    cgroups: dict[str, str] = field(default_factory=dict)
    base: str | None = None

    def to_json(self) -> str:
        return json.dumps({"instance": self.instance, "cgroups": self.cgroups, "base": self.base})


class Guardian:
    """Starts and talks to the keeper. Use it from the event loop's thread."""

    def __init__(self, config: KeeperConfig, reply_timeout: float = _REPLY_TIMEOUT) -> None:
        self.config = config
        self.reply_timeout = reply_timeout
        self.uses_setpriv = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_exit: dict[int, Callable[[int], None]] = {}
        self._slot_of: dict[int, str] = {}
        self._pending: list[dict[str, Any]] = []
        self._closing = False
        self._requests = 0
        self._unanswered: dict[int, float] = {}  # request id -> when it must be answered
        self._starting: dict[int, _Start] = {}  # spawn request id -> its waiting caller
        # Started, but spawn() has not returned it yet: an exit is held until it has.
        self._unclaimed: set[int] = set()
        self._held_exits: dict[int, int] = {}

    @property
    def pid(self) -> int | None:
        """The keeper's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    def leaders(self) -> dict[str, int]:
        """The running leader of each slot that has one."""
        return {slot: pid for pid, slot in self._slot_of.items()}

    def start(self) -> None:
        """Start the keeper and wait until it is ready. Raises OSError if it cannot."""
        if self._proc is not None:
            return
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(KEEPER), self.config.to_json()],
                stdin=theirs.fileno(),
                stdout=subprocess.DEVNULL,
                # Own session: a Ctrl-C or a signal to the IOC's group must not reach it.
                start_new_session=True,
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            ready = self._receive_blocking(ours, time.monotonic() + _START_TIMEOUT)
            if ready.get("op") != "ready":
                raise OSError(f"the keeper said {ready!r} instead of ready")
        except BaseException:
            proc.kill()
            proc.wait()
            ours.close()
            raise
        ours.setblocking(False)
        self.uses_setpriv = bool(ready.get("setpriv"))
        self._proc, self._sock = proc, ours
        if self._loop is not None:
            self._loop.add_reader(ours.fileno(), self._readable)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Hear the keeper on ``loop`` from now on (exits, and the keeper's own end)."""
        self._loop = loop
        if self._sock is not None:
            loop.add_reader(self._sock.fileno(), self._readable)

    async def spawn(
        self,
        slot: str,
        argv: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        out_fd: int,
        on_exit: Callable[[int], None],
    ) -> int:
        """Have the keeper start ``argv`` for ``slot`` with stdout and stderr on ``out_fd``;
        return its pid. ``on_exit(returncode)`` is called once it has exited and the rest
        of its slot has been killed, never before this has returned. Raises OSError (as
        exec would) when it cannot start.

        The event loop runs on while the keeper starts it. A keeper that does not answer
        within ``reply_timeout`` is replaced (OSError here). Cancelled while waiting, the
        run is not wanted: if the keeper starts it anyway, it is killed at once.
        """
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            raise OSError("the IOC's keeper is not running")
        self._requests += 1
        rid = self._requests
        request = {"op": "spawn", "id": rid, "slot": slot, "argv": argv, "cwd": cwd, "env": env}
        payload = json.dumps(request).encode()
        if len(payload) > MAX_MESSAGE:
            raise OSError(f"the script's arguments and environment exceed {MAX_MESSAGE} bytes")
        try:
            socket.send_fds(sock, [payload], [out_fd])
        except OSError as exc:
            self._lost(f"did not take a request: {exc}")
            raise OSError(f"the IOC's keeper failed: {exc}") from None
        start = _Start(slot, loop.create_future(), on_exit)
        self._starting[rid] = start
        timer = loop.call_later(self.reply_timeout, self._start_timed_out, rid)
        try:
            pid = await start.future
        except asyncio.CancelledError:
            if start.future.done() and not start.future.cancelled():
                self._abandon(start.future.result())  # started after all: not wanted
            raise
        finally:
            timer.cancel()
            self._starting.pop(rid, None)
        self._claim(pid)
        return pid

    def signal(self, slot: str, signum: int) -> None:
        """``signum`` to every process of ``slot``'s running script, whatever its session.

        A keeper that does not confirm within ``reply_timeout`` (stopped, wedged) is
        replaced: its scripts die with it, and their runs end as killed.
        """
        self._requests += 1
        request = {"op": "signal", "slot": slot, "signum": int(signum), "id": self._requests}
        self._send(request)
        if self._proc is None or self._loop is None:
            return
        self._unanswered[self._requests] = time.monotonic() + self.reply_timeout
        self._loop.call_later(self.reply_timeout + 0.1, self._check_answers)

    def close(self) -> None:
        """End the keeper (it kills whatever is left and removes the cgroups), wait for it."""
        self._closing = True
        proc, sock = self._proc, self._sock
        self._proc = self._sock = None
        if proc is None or sock is None:
            return
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        with contextlib.suppress(OSError):
            sock.setblocking(True)
            sock.send(b'{"op": "exit"}')
        sock.close()
        try:
            proc.wait(_CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            log.error("the keeper (pid %d) did not end in %g s: killed", proc.pid, _CLOSE_TIMEOUT)
            proc.kill()
            proc.wait()

    # ---- internals -------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        if self._sock is None:
            return
        try:
            self._sock.send(json.dumps(message).encode())
        except OSError as exc:  # gone, or not reading (its buffer full): replace it
            self._lost(f"did not take a request: {exc}")

    @staticmethod
    def _receive_blocking(sock: socket.socket, deadline: float) -> dict[str, Any]:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the keeper did not answer in time")
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                continue
            try:
                data = sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                continue
            if not data:
                raise ConnectionError("the keeper has exited")
            message: dict[str, Any] = json.loads(data)
            return message

    def _readable(self) -> None:
        sock = self._sock
        if sock is None:
            return
        while True:
            try:
                data = sock.recv(MAX_MESSAGE)
            except BlockingIOError:
                break
            except OSError as exc:
                self._lost(f"is unreachable: {exc}")
                return
            if not data:
                self._lost("has exited")
                return
            self._pending.append(json.loads(data))
        self._dispatch_pending()

    def _check_answers(self) -> None:
        now = time.monotonic()
        if any(deadline < now for deadline in self._unanswered.values()):
            self._lost(f"did not answer a request within {self.reply_timeout:g} s")

    def _dispatch_pending(self) -> None:
        pending, self._pending = self._pending, []
        for message in pending:
            op = message.get("op")
            if op == "done":
                self._unanswered.pop(message.get("id"), None)  # type: ignore[arg-type]
            elif op in ("spawned", "error"):
                self._answered(message)
            elif op == "exited":
                self._exited(int(message["pid"]), int(message["status"]))

    def _answered(self, reply: dict[str, Any]) -> None:
        """The keeper's answer to a spawn request."""
        start = self._starting.pop(reply.get("id"), None)  # type: ignore[arg-type]
        if reply["op"] == "error":
            if start is not None and not start.future.done():
                error = OSError(
                    reply.get("errno") or 0, reply.get("message", "?"), reply.get("filename")
                )
                start.future.set_exception(error)
            return
        pid = int(reply["pid"])
        if start is None or start.future.done():  # its caller gave up (cancelled, timed out)
            self.signal(str(reply.get("slot")), signal.SIGKILL)
            return
        self._on_exit[pid] = start.on_exit
        self._slot_of[pid] = start.slot
        self._unclaimed.add(pid)
        start.future.set_result(pid)

    def _exited(self, pid: int, status: int) -> None:
        if pid in self._unclaimed:  # its spawn() has not returned yet: after it has
            self._held_exits[pid] = status
            return
        self._slot_of.pop(pid, None)
        callback = self._on_exit.pop(pid, None)
        if callback is not None:
            callback(status)

    def _claim(self, pid: int) -> None:
        """spawn() returns ``pid``: an exit held meanwhile is delivered right after."""
        self._unclaimed.discard(pid)
        status = self._held_exits.pop(pid, None)
        if status is not None and self._loop is not None:
            self._loop.call_soon(self._exited, pid, status)

    def _abandon(self, pid: int) -> None:
        """A run started for a caller that no longer waits: killed, and forgotten."""
        self._unclaimed.discard(pid)
        self._held_exits.pop(pid, None)
        self._on_exit.pop(pid, None)
        slot = self._slot_of.pop(pid, None)
        if slot is not None:
            self.signal(slot, signal.SIGKILL)

    def _start_timed_out(self, rid: int) -> None:
        start = self._starting.get(rid)
        if start is not None and not start.future.done():
            self._lost(f"did not answer a start within {self.reply_timeout:g} s")

    def _lost(self, how: str) -> None:
        """The keeper is gone or wedged: end what it held, report the runs killed, replace it."""
        proc, sock = self._proc, self._sock
        if proc is None or sock is None or self._closing:
            return
        self._proc = self._sock = None
        self._unanswered.clear()
        starting, self._starting = self._starting, {}
        for start in starting.values():
            if not start.future.done():
                start.future.set_exception(OSError(f"the IOC's keeper {how}"))
        if self._loop is not None:
            self._loop.remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(OSError):
            proc.kill()  # wedged rather than dead: the scripts die with it (PDEATHSIG)
        proc.wait()
        slots = set(self._slot_of.values()) | {start.slot for start in starting.values()}
        runs = {pid: cb for pid, cb in self._on_exit.items() if pid not in self._unclaimed}
        # A run whose spawn() has not returned yet hears of its end once it has.
        for pid in self._unclaimed:
            self._held_exits[pid] = -signal.SIGKILL
        self._on_exit = {pid: cb for pid, cb in self._on_exit.items() if pid in self._unclaimed}
        self._slot_of = {pid: s for pid, s in self._slot_of.items() if pid in self._unclaimed}
        log.error(
            "the IOC's keeper (pid %d) %s: killing what its %d script(s) left; starting a new one",
            proc.pid,
            how,
            len(runs) + len(self._unclaimed),
        )
        for slot in sorted(slots):
            self.kill_slot_leftovers(slot)
        try:
            self.start()
        except OSError as exc:
            log.error("cannot start a new keeper: %s; scripts cannot be started", exc)
        for callback in runs.values():
            if self._loop is not None:
                self._loop.call_soon(callback, -signal.SIGKILL)
            else:
                callback(-signal.SIGKILL)

    def kill_slot_leftovers(self, slot: str) -> list[int]:
        """SIGKILL every process of ``slot``, without the keeper: its cgroup, or every
        process on the machine carrying its marker."""
        path = self.config.cgroups.get(slot)
        if path is not None:
            return cgroups.kill(path)
        return proctree.stop_and_kill(lambda: proctree.marked(self.config.instance, slot))
