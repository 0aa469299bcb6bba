"""Start the real IOC as a subprocess and drive it through pyepics (libca)."""

from __future__ import annotations

import codecs
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import epics
import psutil

STARTUP_TIMEOUT = 20.0


def wait_for(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``condition`` until it returns something truthy, or fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = condition()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")


class Ioc:
    """One bgrscrpt_ioc process serving ``prefix`` on its own CA port."""

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
    ):
        self.prefix = prefix
        self.port = port
        self.config_dir = config_dir
        self.var_dir = var_dir
        self.slots = slots
        self.args = args or []
        self.extra_env = env or {}
        self.preexec_fn = preexec_fn
        self.proc: subprocess.Popen | None = None
        self.log_path = var_dir.parent / f"ioc-{port}-{int(time.time() * 1000)}.out"

    def command(self) -> list[str]:
        # BGRSCRPT_STOCK_CAPROTO=1: caproto's plain server, to see a caproto-fix test fail.
        stock = os.environ.get("BGRSCRPT_STOCK_CAPROTO") == "1"
        return [
            sys.executable,
            "-m",
            "tests.stock_caproto_ioc" if stock else "bgrscrpt_ioc",
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

    def start(self, wait: bool = True) -> Ioc:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        self._out = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            self.command(),
            env=self.environment(),
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

        wait_for(up, STARTUP_TIMEOUT, "the IOC to serve its PVs")

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
        kw.setdefault("use_monitor", False)
        if not kw["use_monitor"] and kw.get("as_string"):
            kw.setdefault("count", 0)
        return epics.caget(self.pv(suffix), timeout=timeout, **kw)

    def put(self, suffix: str, value: Any, wait: bool = True, timeout: float = 5.0) -> Any:
        return epics.caput(self.pv(suffix), value, wait=wait, timeout=timeout)

    def status(self, slot: str = "BGRSCRPT_01") -> str | None:
        return self.get(f"{slot}:STATUS", as_string=True)

    def wait_status(self, state: str, slot: str = "BGRSCRPT_01", timeout: float = 15.0) -> None:
        wait_for(
            lambda: self.status(slot) == state,
            timeout,
            f"{slot}:STATUS == {state} (MSG: {self.get(f'{slot}:MSG', as_string=True)!r})",
        )

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for a clean exit; SIGKILL only if that fails (and say so)."""
        if self.proc is None:
            return 0
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
                    raise AssertionError("IOC did not exit on SIGTERM") from None
        finally:
            self._out.close()
        return self.proc.returncode

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self._out.close()


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def caget_text(ioc: Ioc, suffix: str) -> str:
    """The PV as EPICS base's ``caget -S`` gets it: what a C client (CS-Studio) sees.

    caget prints the C string escaped (a backslash as ``\\\\``, a newline as ``\\n``,
    other bytes as ``\\xNN``); undone here. No caRepeater on PATH: one started by
    caget would outlive the test.
    """
    out = subprocess.run(
        [str(Path(sys.executable).parent / "caget"), "-t", "-S", "-w", "5", ioc.pv(suffix)],
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    printed = out.stdout.removesuffix(b"\n")
    return codecs.escape_decode(printed)[0].decode("utf-8")  # type: ignore[attr-defined]


def keeper_of(ioc: Ioc) -> psutil.Process:
    """The IOC's keeper process (the parent of its scripts)."""
    assert ioc.proc is not None
    found = [
        child
        for child in psutil.Process(ioc.proc.pid).children()
        if any(arg.endswith("bgrscrpt_ioc/supervisor/keeper.py") for arg in child.cmdline())
    ]
    assert len(found) == 1, found
    return found[0]
