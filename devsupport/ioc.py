"""The real bgrscrpt_ioc as a subprocess, on its own CA port, driven through pyepics
(libca, the C library CS-Studio and genie_python use).

:mod:`epics` is imported only when a PV is first read or written: libca reads
its address list once, so the caller points Channel Access at its ports first
(:mod:`devsupport.ca_env`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Self

from devsupport.waiting import wait_for

STARTUP_TIMEOUT = 20.0


class Ioc:
    """One bgrscrpt_ioc process serving ``prefix`` on its own CA port.

    The IOC's output goes to ``log_path``.
    """

    poll_every = 0.05
    """How often :meth:`wait_status` reads STATUS."""
    startup_timeout = STARTUP_TIMEOUT

    def __init__(
        self,
        *,
        prefix: str,
        port: int,
        config_dir: Path,
        var_dir: Path,
        slots: int = 2,
        args: list[str] | None = None,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
        log_path: Path | None = None,
        cwd: Path | None = None,
    ):
        self.prefix = prefix
        self.port = port
        self.config_dir = config_dir
        self.var_dir = var_dir
        self.slots = slots
        self.args = args or []
        self.extra_env = env or {}
        self.preexec_fn = preexec_fn
        self.cwd = cwd
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = log_path or var_dir.parent / f"ioc-{port}-{int(time.time() * 1000)}.out"
        self.stopped_cleanly: bool | None = None
        """After :meth:`stop`: whether the IOC exited on SIGTERM (None: never started)."""
        self._out: IO[bytes] | None = None

    def server_module(self) -> str:
        """What ``python -m`` runs (a subclass may run another server that takes the
        same command line)."""
        return "bgrscrpt_ioc"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            self.server_module(),
            "--prefix",
            self.prefix,
            "--config-dir",
            str(self.config_dir),
            "--var-dir",
            str(self.var_dir),
            "--slots",
            str(self.slots),
            *self.args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["EPICS_CA_SERVER_PORT"] = str(self.port)
        env.update(self.extra_env)
        return env

    def start(self, wait: bool = True) -> Self:
        """Start the IOC; with ``wait``, return once it serves its PVs."""
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
            cwd=self.cwd,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=self.preexec_fn,
        )
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self) -> None:
        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"IOC exited with {self.proc.returncode}:\n{self.output()}")
            return self.get("BGRSCRPT:VERSION", timeout=0.5) is not None

        wait_for(up, self.startup_timeout, f"the IOC on port {self.port} to serve its PVs")

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def pv(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    def get(self, suffix: str, timeout: float = 2.0, **kw: Any) -> Any:
        """A fresh read from the IOC (not pyepics' cached monitor value).

        A fresh text read also asks for the server's current length (count 0):
        pyepics otherwise asks for as many elements as its monitor last delivered,
        so a longer MSG read just before its monitor update arrives comes back cut
        to the previous message's length. (Only for text: pyepics slices a numeric
        array to ``count`` after the read, and ``[:0]`` is empty.)"""
        import epics

        kw.setdefault("use_monitor", False)
        if not kw["use_monitor"] and kw.get("as_string"):
            kw.setdefault("count", 0)
        return epics.caget(self.pv(suffix), timeout=timeout, **kw)

    def put(self, suffix: str, value: Any, wait: bool = True, timeout: float = 5.0) -> Any:
        import epics

        return epics.caput(self.pv(suffix), value, wait=wait, timeout=timeout)

    def status(self, slot: str = "BGRSCRPT_01") -> str | None:
        return self.get(f"{slot}:STATUS", as_string=True)

    def wait_status(self, state: str, slot: str = "BGRSCRPT_01", timeout: float = 15.0) -> str:
        """Wait until ``slot``'s STATUS reads ``state``; the MSG it had is in the failure."""
        try:
            return wait_for(
                lambda: self.status(slot) == state and state,
                timeout,
                f"{slot}:STATUS == {state}",
                every=self.poll_every,
            )
        except AssertionError as exc:
            msg = self.get(f"{slot}:MSG", as_string=True)
            raise AssertionError(f"{exc} (MSG: {msg!r})") from None

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0, *, must_exit: bool = True) -> int:
        """SIGTERM (the IOC stops every script first), wait for a clean exit; SIGKILL
        only if that fails, and then raise AssertionError unless not ``must_exit``
        (:attr:`stopped_cleanly` says which it was)."""
        if self.proc is None:
            return 0
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                    self.stopped_cleanly = True
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    self.stopped_cleanly = False
                    if must_exit:
                        raise AssertionError("IOC did not exit on SIGTERM") from None
        finally:
            self._close_output()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._close_output()

    def _close_output(self) -> None:
        if self._out is not None:
            self._out.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
