"""The lifeline: no script outlives the IOC, even when the IOC is killed with SIGKILL.

PR_SET_PDEATHSIG kills a script's leader when the IOC dies, but not what the
script started in its group. So the IOC keeps a tiny helper process (this file,
run as ``python -I -S guardian.py``) in its own session, with a pipe from the IOC
as its stdin. The IOC writes ``+<pgid>`` / ``-<pgid>`` as scripts start and end.
When the pipe reaches EOF, whatever the reason the IOC went away, the helper
SIGKILLs every group still registered and exits. ``exit`` ends it killing nothing.

This module is also that helper's program: keep its top-level imports in the
standard library.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time

log = logging.getLogger(__name__)

_READY = b"ready\n"
_START_TIMEOUT = 10.0
_CLOSE_TIMEOUT = 5.0


class Guardian:
    """The IOC's side of the lifeline. Use it from the event loop's thread."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._broken = False

    @property
    def pid(self) -> int | None:
        """The helper's pid while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> None:
        """Start the helper and wait until it is ready. Raises OSError if it cannot."""
        if self._proc is not None:
            return
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", os.path.abspath(__file__)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            # Own session: a Ctrl-C or a signal to the IOC's group must not reach it.
            start_new_session=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            # Ready means its signal dispositions are set: nothing can stop it early.
            deadline = time.monotonic() + _START_TIMEOUT
            poller = select.poll()
            poller.register(proc.stdout, select.POLLIN)
            while not poller.poll(max(deadline - time.monotonic(), 0.0) * 1000):
                if time.monotonic() >= deadline:
                    raise OSError(f"guardian did not start within {_START_TIMEOUT:g} s")
            if proc.stdout.readline() != _READY:
                raise OSError(f"guardian failed to start (exit status {proc.poll()})")
        except BaseException:
            proc.kill()
            proc.wait()
            proc.stdin.close()
            proc.stdout.close()
            raise
        proc.stdout.close()  # it says nothing more
        self._proc = proc

    def add(self, pgid: int) -> None:
        """Register a script's process group: killed if the IOC dies."""
        self._send(f"+{pgid}\n")

    def remove(self, pgid: int) -> None:
        """Forget a group (its leader has been reaped)."""
        self._send(f"-{pgid}\n")

    def close(self) -> None:
        """End the helper killing nothing, wait for it (bounded), close the pipe (idempotent)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        assert proc.stdin is not None
        # OSError: it is gone already; ValueError: the pipe was closed.
        with contextlib.suppress(OSError, ValueError):
            proc.stdin.write(b"exit\n")
            proc.stdin.flush()
        with contextlib.suppress(OSError):
            proc.stdin.close()
        try:
            proc.wait(_CLOSE_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _send(self, line: str) -> None:
        # Tiny synchronous writes: the helper reads them at once, the pipe never fills.
        # A dead helper is logged, not raised: the script runs on either way.
        if self._proc is None or self._proc.stdin is None:
            return
        try:
            self._proc.stdin.write(line.encode())
            self._proc.stdin.flush()
        except (OSError, ValueError) as exc:
            if not self._broken:
                log.error("guardian (pid %s) is gone: %s", self._proc.pid, exc)
            self._broken = True


def _main() -> int:
    """The helper: stdlib only, as it runs with ``-I -S``."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    os.write(1, _READY)
    groups: set[int] = set()
    for raw in sys.stdin.buffer:
        line = raw.strip()
        if line == b"exit":
            return 0
        try:
            pgid = int(line[1:])
        except ValueError:
            continue
        if pgid <= 1:  # killpg(0) or (1) would hit the helper itself or everything
            continue
        if line.startswith(b"+"):
            groups.add(pgid)
        elif line.startswith(b"-"):
            groups.discard(pgid)
    # EOF: the IOC is gone.
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
