"""The keeper: parent of every script of one IOC, their child subreaper, the lifeline.

The IOC (``guardian.Guardian``) runs this file as ``python -I -S keeper.py CONFIG``
in a session of its own, with a SOCK_SEQPACKET socket to the IOC as stdin. The
keeper:

- starts each script on request (``spawn``), leader of its own session, with
  ``PR_SET_PDEATHSIG`` tied to the keeper, the slot's marker in its environment,
  and, with cgroups, moves it into the slot's cgroup before the script's first
  statement (below);
- is a child subreaper (``PR_SET_CHILD_SUBREAPER``): whatever a script starts,
  in any session, stays below the keeper when its parent dies, never under PID 1;
- signals every process of a slot on request (``signal``): the leader's group,
  and the slot's cgroup or, without cgroups, every process below the keeper
  that descends from the leader or carries the slot's marker;
- when a leader exits, SIGKILLs the rest of its slot, reaps it and reports
  ``exited``; reaps the orphans it adopts;
- when the IOC goes away (EOF on the socket, whatever killed the IOC) or says
  ``exit``: SIGKILLs every cgroup of the IOC and every process below itself,
  removes the cgroups and exits.

Placement without slowing the start: writing a pid into ``cgroup.procs`` waits
for an RCU grace period (~15 ms on a quiet 2-core VM), as long as a script takes
to start. So the script is started at once, through ``vfork`` as before, with
the read end of a "gate" pipe; a thread of the keeper moves it into the cgroup
meanwhile and then writes to the gate. The script's ``sitecustomize`` (the
first thing Python runs that the IOC provides, before the script's code) waits
on the gate: the move overlaps Python's own start-up instead of adding to it.

Standard library only (it runs with ``-I -S``); ``proctree`` and ``cgroups``
are imported from this file's directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import queue
import selectors
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

if __name__ == "__main__":  # run as a program: find the sibling modules
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cgroups  # type: ignore[import-not-found]  # top-level here, found through the path
    import proctree  # type: ignore[import-not-found]
else:  # imported by the IOC for its constants
    from . import cgroups, proctree

GATE_VAR = "BGRSCRPT_GATE_FD"
"""The fd a script's sitecustomize waits on: ``1`` once placed, ``0<why>`` if not."""
PARENT_PID_VAR = "BGRSCRPT_IOC_PID"
"""For a script started through setpriv: the pid its parent (the keeper) must have."""
MAX_MESSAGE = 4 << 20
_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36
_REAP_TIMEOUT = 5.0


def _prctl() -> Callable[..., int]:
    fn = ctypes.CDLL(None, use_errno=True).prctl
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    fn.restype = ctypes.c_int
    return fn  # type: ignore[no-any-return]


def _setpriv_prefix() -> list[str]:
    """``setpriv --pdeathsig KILL --`` when it works here (util-linux >= 2.33), else []."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return []
    prefix = [setpriv, "--pdeathsig", "KILL", "--"]
    try:
        done = subprocess.run([*prefix, "true"], capture_output=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return []
    return prefix if done.returncode == 0 else []


def _check_executable(program: str) -> None:
    """What exec would say of ``program``, said before setpriv hides it in an exit status."""
    path = program if os.sep in program else shutil.which(program)
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", program)
    if not os.access(path, os.X_OK):
        raise PermissionError(errno.EACCES, "Permission denied", program)


class Keeper:
    def __init__(self, sock: socket.socket, config: dict[str, Any]) -> None:
        self.sock = sock
        self.instance: str = config["instance"]
        self.cgroups: dict[str, str] = dict(config.get("cgroups") or {})
        self.base: str | None = config.get("base")
        self.prctl = _prctl()
        self.pid = os.getpid()
        self.setpriv = _setpriv_prefix()
        self.leaders: dict[int, tuple[str, subprocess.Popen[bytes]]] = {}
        self.slot_leader: dict[str, int] = {}
        self.lock = threading.Lock()
        self.placing: set[int] = set()  # leaders not to be reaped yet: a move is under way
        self.moves: queue.SimpleQueue[tuple[int, str, int] | None] = queue.SimpleQueue()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.placer: threading.Thread | None = None

    # ---- the loop ------------------------------------------------------------

    def run(self) -> int:
        # A Ctrl-C or a signal to the IOC's group must not end the lifeline. Caught, not
        # ignored: an ignored signal would stay ignored in every script it starts.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, lambda *_: None)
        signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd fires
        signal.set_wakeup_fd(self.wake_w)
        if self.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
            print(f"keeper: PR_SET_CHILD_SUBREAPER: errno {ctypes.get_errno()}", file=sys.stderr)
        if self.cgroups:
            self.placer = threading.Thread(target=self._place_loop, name="placer", daemon=True)
            self.placer.start()
        self.send({"op": "ready", "pid": self.pid, "setpriv": bool(self.setpriv)})
        selector = selectors.DefaultSelector()
        selector.register(self.sock, selectors.EVENT_READ, "ioc")
        selector.register(self.wake_r, selectors.EVENT_READ, "wake")
        while True:
            for key, _ in selector.select(timeout=1.0):
                if key.data == "ioc":
                    if not self.receive():
                        self.shutdown()
                        return 0
                else:
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 4096):
                            pass
            self.reap()

    def receive(self) -> bool:
        """One message from the IOC; False at EOF or ``exit``."""
        try:
            data, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, 4)
        except InterruptedError:
            return True
        except OSError:
            return False
        if not data:
            for fd in fds:
                os.close(fd)
            return False
        try:
            message = json.loads(data)
            op = message["op"]
        except (ValueError, KeyError, TypeError):
            op = None
        if op == "spawn":
            self.spawn(message, fds)
            return True
        for fd in fds:
            os.close(fd)
        if op == "signal":
            self.signal_slot(str(message["slot"]), int(message["signum"]))
            self.send({"op": "done", "id": message.get("id")})
        return op != "exit"

    def send(self, message: dict[str, Any]) -> None:
        with contextlib.suppress(OSError):  # the IOC is gone: the loop sees EOF next
            self.sock.send(json.dumps(message).encode())

    # ---- requests --------------------------------------------------------------

    def spawn(self, message: dict[str, Any], fds: list[int]) -> None:
        slot = str(message.get("slot"))
        out_fd, extra = (fds[0], fds[1:]) if fds else (-1, [])
        for fd in extra:
            os.close(fd)
        gate: tuple[int, int] | None = None
        reply: dict[str, Any] = {"op": "spawned", "slot": slot, "id": message.get("id")}
        try:
            if out_fd < 0:
                raise OSError(errno.EINVAL, "no output pipe")
            if slot in self.slot_leader:
                raise OSError(errno.EBUSY, f"{slot} runs already (pid {self.slot_leader[slot]})")
            argv = [str(arg) for arg in message["argv"]]
            env = {str(k): str(v) for k, v in message["env"].items()}
            env[proctree.MARK_VAR] = proctree.mark_value(self.instance, slot)
            _check_executable(argv[0])
            pass_fds: tuple[int, ...] = ()
            if slot in self.cgroups:
                gate = os.pipe()
                env[GATE_VAR] = str(gate[0])
                pass_fds = (gate[0],)
            preexec: Callable[[], None] | None = None
            if self.setpriv:
                argv = [*self.setpriv, *argv]
                env[PARENT_PID_VAR] = str(self.pid)
            else:
                preexec = self._child_setup
            popen = subprocess.Popen(
                argv,
                cwd=str(message["cwd"]),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out_fd,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                pass_fds=pass_fds,
                preexec_fn=preexec,
            )
        except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as exc:
            if gate is not None:
                os.close(gate[0])
                os.close(gate[1])
            number = exc.errno if isinstance(exc, OSError) and exc.errno else errno.EINVAL
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            filename = exc.filename if isinstance(exc, OSError) else None
            reply = {"op": "error", "slot": slot, "id": message.get("id")}
            reply.update(errno=number, message=text)
            reply["filename"] = None if filename is None else str(filename)
        else:
            pid = popen.pid
            self.leaders[pid] = (slot, popen)
            self.slot_leader[slot] = pid
            reply["pid"] = pid
            if gate is not None:
                os.close(gate[0])
                with self.lock:
                    self.placing.add(pid)
                self.moves.put((pid, self.cgroups[slot], gate[1]))
        finally:
            if out_fd >= 0:
                os.close(out_fd)
        self.send(reply)

    def _child_setup(self) -> None:
        # Without setpriv: the same, in the child after fork (slower: a full fork).
        self.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != self.pid:  # the keeper died between fork and prctl
            os._exit(1)

    def signal_slot(self, slot: str, signum: int) -> None:
        """``signum`` to every process of ``slot``'s run; nothing once its leader is reaped
        (what it left was killed then)."""
        leader = self.slot_leader.get(slot)
        if leader is None:
            return
        if signum == signal.SIGKILL:
            self.kill_slot(slot, leader)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(leader, signum)
        # The rest of the slot, each process once: the leader's group has it already.
        others = [pid for pid in self.members(slot, leader) if _pgid(pid) != leader]
        proctree.signal_all(others, signum)

    def members(self, slot: str, leader: int | None) -> list[int]:
        path = self.cgroups.get(slot)
        if path is not None:
            return cgroups.tree_procs(path)
        return proctree.slot_members(leader, self.pid, self.instance, slot, self.leaders)

    def kill_slot(self, slot: str, leader: int | None) -> None:
        """SIGKILL the leader's group and everything else of the slot."""
        if leader is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(leader, signal.SIGKILL)
        path = self.cgroups.get(slot)
        if path is not None:
            with contextlib.suppress(OSError):
                cgroups.kill(path)
        else:
            proctree.stop_and_kill(lambda: self.members(slot, leader))

    # ---- children ----------------------------------------------------------------

    def reap(self) -> None:
        """Report leaders that exited (after killing what they left), reap the rest."""
        for pid, (slot, popen) in list(self.leaders.items()):
            with self.lock:
                if pid in self.placing:  # reaped once moved: the pid must not be reused
                    continue
            with contextlib.suppress(ChildProcessError):  # (gone: report it all the same)
                if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                    continue  # still running
            # Kill what it left before reaping: the zombie keeps its pgid from reuse.
            self.kill_slot(slot, pid)
            try:
                _, status = os.waitpid(pid, 0)
                code = os.waitstatus_to_exitcode(status)
            except ChildProcessError:
                code = 255  # someone else reaped it: the status is lost
            popen.returncode = code  # subprocess must not wait for it again
            del self.leaders[pid]
            self.slot_leader.pop(slot, None)
            self.send({"op": "exited", "slot": slot, "pid": pid, "status": code})
        for pid in proctree.children(self.pid):
            if pid not in self.leaders:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)  # an adopted orphan, or a zombie of one

    def _place_loop(self) -> None:
        while True:
            item = self.moves.get()
            if item is None:
                return
            pid, path, gate = item
            try:
                os.makedirs(path, exist_ok=True)
                cgroups.place(path, pid)
                answer = b"1"
            except OSError as exc:
                answer = b"0" + f"{path}: {exc.strerror or exc}".encode()
            with contextlib.suppress(OSError):
                os.write(gate, answer)
            os.close(gate)
            with self.lock:
                self.placing.discard(pid)
            with contextlib.suppress(OSError):
                os.write(self.wake_w, b"p")

    # ---- the end -------------------------------------------------------------------

    def shutdown(self) -> None:
        """The IOC is gone: nothing it started may stay. Kill, reap, remove the cgroups."""
        if self.base is not None:
            with contextlib.suppress(OSError):
                cgroups.kill(self.base)
        proctree.stop_and_kill(lambda: proctree.descendants(proctree.children(self.pid)))
        if self.placer is not None:
            self.moves.put(None)
            self.placer.join(_REAP_TIMEOUT)
        deadline = time.monotonic() + _REAP_TIMEOUT
        while time.monotonic() < deadline:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break  # no children left
            if pid == 0:
                time.sleep(0.01)
        if self.base is not None:
            cgroups.remove(self.base)


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def main() -> int:
    """The keeper: stdlib only, as it runs with ``-I -S``."""
    config = json.loads(sys.argv[1])
    sock = socket.socket(fileno=0)
    keeper = Keeper(sock, config)
    return keeper.run()


if __name__ == "__main__":
    sys.exit(main())
