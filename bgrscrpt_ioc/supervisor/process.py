"""One run of a script: started by the IOC's keeper, its output read by the IOC.

Why not ``asyncio.create_subprocess_exec``: its ``wait()`` only returns once every
pipe is closed, and a grandchild that inherited the script's stdout keeps it open
for as long as it likes. Here the exit (reported by the keeper) and output EOF
(the pipe) are watched separately, so neither ever waits for the other.

The script is the keeper's child, not the IOC's (``guardian.py`` says why): the
IOC creates the output pipe, hands its write end to the keeper with the spawn
request, and reads the other end on its event loop.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable

from .guardian import Guardian

_READ_SIZE = 65536
# At exit, output still buffered in the pipe is delivered before on_exit (so an
# exception summary is complete); bounded in case an escaped grandchild floods it.
_DRAIN_READS = 16


class ScriptProcess:
    """One run of a script: the leader of its own session and process group.

    Create with :meth:`spawn`. When the leader exits, everything else of its slot
    (its group, its cgroup, the processes carrying its marker) is SIGKILLed by
    the keeper, output already in the pipe is passed to ``on_output``, and
    ``on_exit(returncode)`` is called (negative: killed by that signal). Output
    keeps flowing to ``on_output`` until EOF, which may come before or after the exit.
    """

    pid: int
    returncode: int | None

    def __init__(
        self,
        slot: str,
        guardian: Guardian,
        out_fd: int,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.slot = slot
        self.pid = 0
        self.returncode = None
        self._guardian = guardian
        self._out_fd = out_fd
        self._on_output = on_output
        self._on_exit = on_exit
        self._loop = loop

    @classmethod
    async def spawn(
        cls,
        argv: list[str],
        *,
        slot: str,
        guardian: Guardian,
        cwd: str,
        env: dict[str, str],
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int], None],
        loop: asyncio.AbstractEventLoop,
    ) -> ScriptProcess:
        """Start ``argv`` for ``slot`` in a new session; stdout and stderr go to one pipe.

        Raises OSError (e.g. FileNotFoundError) when it cannot start; then no
        process and no file descriptor is left behind.
        """
        read_fd, write_fd = os.pipe()
        proc = cls(slot, guardian, read_fd, on_output, on_exit, loop)
        try:
            try:
                proc.pid = await guardian.spawn(
                    slot, argv, cwd=cwd, env=env, out_fd=write_fd, on_exit=proc._exited
                )
            finally:
                os.close(write_fd)
            os.set_blocking(read_fd, False)
            loop.add_reader(read_fd, proc._readable)
        except BaseException:
            if proc.pid:  # started, but cannot be watched: take it back
                guardian.signal(slot, signal.SIGKILL)
            os.close(read_fd)
            proc._out_fd = -1
            raise
        return proc

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to every process of the run, whatever its session or group;
        a no-op once the run has exited."""
        if self.returncode is None:
            self._guardian.signal(self.slot, signum)

    def close(self) -> None:
        """Stop reading: remove the reader and close the pipe (idempotent).

        Call it after ``on_exit``; it neither kills nor reaps a running process.
        """
        self._close_output()

    # ---- callbacks ---------------------------------------------------------------

    def _exited(self, code: int) -> None:
        self.returncode = code
        try:
            for _ in range(_DRAIN_READS):
                if not self._read_once():
                    break
        finally:
            self._on_exit(code)

    def _readable(self) -> None:
        self._read_once()

    def _read_once(self) -> bool:
        """One bounded read, so a flood of output cannot starve the loop. True if data came."""
        if self._out_fd < 0:
            return False
        try:
            data = os.read(self._out_fd, _READ_SIZE)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:
            self._close_output()
            return False
        self._on_output(data)
        return True

    def _close_output(self) -> None:
        if self._out_fd >= 0:
            self._loop.remove_reader(self._out_fd)
            os.close(self._out_fd)
            self._out_fd = -1
