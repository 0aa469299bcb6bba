"""One run of a script as a child process: the leader of its own process group.

Why not ``asyncio.create_subprocess_exec``: its ``wait()`` only returns once every
pipe is closed, and a grandchild that inherited the script's stdout keeps it open
for as long as it likes. Here process exit (a pidfd) and output EOF (the pipe) are
watched separately, so neither ever waits for the other.

How a script gets ``PR_SET_PDEATHSIG``: through util-linux's ``setpriv
--pdeathsig KILL``, which sets it and execs the script (same pid). Setting it
in a ``preexec_fn`` instead forces a full ``fork()`` of the IOC, and copying the
IOC's page tables plus running Python in the child costs about 3 ms per start;
without a ``preexec_fn`` subprocess uses ``vfork()``, and setpriv costs about
1 ms. The IOC could die before setpriv sets the signal: the script's
``sitecustomize`` then finds its parent is not ``BGRSCRPT_IOC_PID`` and ends at
once. Where setpriv is missing, the ``preexec_fn`` does both steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import os
import shutil
import signal
import subprocess
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1
_READ_SIZE = 65536
# At exit, output still buffered in the pipe is delivered before on_exit (so an
# exception summary is complete); bounded in case an escaped grandchild floods it.
_DRAIN_READS = 16

PARENT_PID_VAR = "BGRSCRPT_IOC_PID"
"""Set for a script started through setpriv: the pid its parent must have."""

_prctl: Callable[..., int] | None = None


@functools.cache
def setpriv_prefix() -> tuple[str, ...]:
    """``setpriv --pdeathsig KILL --`` when this setpriv can do it, else ().

    The first call runs setpriv once (a few ms): the IOC makes it at start-up.
    """
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return ()
    prefix = (setpriv, "--pdeathsig", "KILL", "--")
    try:  # util-linux before 2.33 has no --pdeathsig
        ok = subprocess.run([*prefix, "true"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.SubprocessError):
        ok = False
    return prefix if ok else ()


def _load_prctl() -> Callable[..., int]:
    """libc's prctl, resolved in the parent: the child after fork must do as little as it can."""
    global _prctl
    if _prctl is None:
        fn = ctypes.CDLL(None, use_errno=True).prctl
        fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        fn.restype = ctypes.c_int
        _prctl = fn
    return _prctl


def _child_setup(ioc_pid: int, prctl: Callable[..., int]) -> Callable[[], None]:
    def setup() -> None:
        # The kernel kills the script when the thread that forked it dies, even by SIGKILL.
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        # The IOC may have died between fork and prctl; then nobody would ever kill us.
        if os.getppid() != ioc_pid:
            os._exit(1)

    return setup


def _check_executable(program: str) -> None:
    """What exec would say of ``program``, said before setpriv hides it in an exit status."""
    path = program if os.sep in program else shutil.which(program)
    if path is None or not os.path.isfile(path):
        raise FileNotFoundError(2, "No such file or directory", program)
    if not os.access(path, os.X_OK):
        raise PermissionError(13, "Permission denied", program)


class ScriptProcess:
    """One run of a script: the leader of its own process group.

    Create with :meth:`spawn`, on the event loop's thread (PR_SET_PDEATHSIG is
    tied to the thread that forks). When the leader exits, the rest of its group
    is SIGKILLed, the leader is reaped, output already in the pipe is passed to
    ``on_output``, and ``on_exit(returncode)`` is called (negative: killed by that
    signal). Output keeps flowing to ``on_output`` until EOF, which may come
    before or after the exit.
    """

    pid: int
    returncode: int | None

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        pidfd: int,
        out_fd: int,
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._popen = popen
        self.pid = popen.pid
        self.returncode = None
        self._pidfd = pidfd
        self._out_fd = out_fd
        self._on_output = on_output
        self._on_exit = on_exit
        self._loop = loop

    @classmethod
    def spawn(
        cls,
        argv: list[str],
        *,
        cwd: str,
        env: dict[str, str],
        on_output: Callable[[bytes], None],
        on_exit: Callable[[int], None],
        loop: asyncio.AbstractEventLoop,
    ) -> ScriptProcess:
        """Start ``argv`` in a new session; stdout and stderr go to one pipe.

        Raises OSError (e.g. FileNotFoundError) when it cannot start; then no
        process and no file descriptor is left behind.
        """
        prefix = setpriv_prefix()
        preexec_fn: Callable[[], None] | None = None
        if prefix:
            _check_executable(argv[0])
            argv = [*prefix, *argv]
            env = {**env, PARENT_PID_VAR: str(os.getpid())}
        else:
            preexec_fn = _child_setup(os.getpid(), _load_prctl())
        read_fd, write_fd = os.pipe()
        popen: subprocess.Popen[bytes] | None = None
        try:
            try:
                popen = subprocess.Popen(
                    argv,
                    cwd=cwd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=write_fd,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    preexec_fn=preexec_fn,
                )
            except subprocess.SubprocessError as exc:  # raised by the child setup
                raise OSError(f"cannot start {argv[0]}: {exc}") from exc
            finally:
                os.close(write_fd)
            os.set_blocking(read_fd, False)
            proc = cls(popen, os.pidfd_open(popen.pid), read_fd, on_output, on_exit, loop)
            try:
                loop.add_reader(proc._pidfd, proc._exited)
                loop.add_reader(read_fd, proc._readable)
            except BaseException:
                proc.close()  # closes read_fd too
                read_fd = -1
                raise
        except BaseException:
            if read_fd >= 0:
                os.close(read_fd)
            if popen is not None:  # started, but cannot be watched: take it back
                with contextlib.suppress(OSError):
                    os.killpg(popen.pid, signal.SIGKILL)
                popen.wait()
            raise
        return proc

    def kill_group(self, signum: int) -> None:
        """Send ``signum`` to the whole process group; a no-op once the leader is reaped."""
        if self.returncode is not None:
            return
        # ESRCH: the group is gone; EPERM: some systems say so for a zombie-only group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signum)

    def close(self) -> None:
        """Stop watching: remove the readers and close the descriptors (idempotent).

        Call it after ``on_exit``; it neither kills nor reaps a running process.
        """
        if self._pidfd >= 0:
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = -1
        self._close_output()

    # ---- loop callbacks ----------------------------------------------------

    def _exited(self) -> None:
        self._loop.remove_reader(self._pidfd)
        # Kill what the script left in its group before reaping it: the zombie leader
        # keeps the pgid from being reused, so this cannot hit an unrelated group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        try:
            _, status = os.waitpid(self.pid, 0)
            code = os.waitstatus_to_exitcode(status)
        except ChildProcessError:
            # Someone else reaped it (SIGCHLD ignored, a foreign child watcher):
            # the status is lost.
            code = 255
        self.returncode = code
        self._popen.returncode = code  # Popen must not wait for it again
        os.close(self._pidfd)
        self._pidfd = -1
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
