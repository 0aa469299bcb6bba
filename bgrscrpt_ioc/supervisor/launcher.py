"""What a slot runner does to the world, behind one interface it is given.

:class:`Launcher` is the slot runner's spawn adapter: it checks a script, starts
a run (a process whose output and exit come back through callbacks), captures
the output (the log file, LOG's last lines, the last traceback) and listens on
the slot's notify socket. :class:`ScriptLauncher` is the real one (the keeper,
``OutputCapture``, ``NotifyListener``); a test passes a fake, so that the runner
can be driven without processes.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Protocol

from ..settings import SlotSettings
from .env import kit_root, script_environment
from .guardian import Guardian
from .notify import NotifyListener
from .output import OutputCapture
from .process import ScriptProcess
from .script_check import check_script, look

OnNotify = Callable[[dict[str, str]], None]


class Run(Protocol):
    """One run of a script, as the runner sees it."""

    @property
    def pid(self) -> int: ...

    def signal_all(self, signum: int) -> None:
        """Signal every process of the run (a no-op once it has exited)."""

    def close(self) -> None:
        """Stop reading its output (after its exit)."""


class Output(Protocol):
    """A slot's output across its runs: the log file and what LOG and MSG quote."""

    @property
    def tail(self) -> str: ...

    @property
    def exception_summary(self) -> str: ...

    def new_run(self) -> None: ...
    def feed(self, data: bytes) -> None: ...
    def mark(self, text: str) -> None: ...
    def close(self) -> None: ...


class Launcher(Protocol):
    """The slot runner's spawn adapter (process, output capture, notify listener)."""

    @property
    def output(self) -> Output: ...

    def open(self, loop: asyncio.AbstractEventLoop, on_notify: OnNotify) -> None:
        """Start listening for the scripts' notices (``on_notify(fields)``)."""

    def close(self) -> None:
        """Stop listening; close the log file."""

    def missing(self) -> str:
        """Why the script cannot be found ("no script at …"), or ""."""

    def check(self) -> Awaitable[str]:
        """Check the script before a start, off the loop: "" or the problem in words."""

    async def spawn(
        self, on_output: Callable[[bytes], None], on_exit: Callable[[int], None]
    ) -> Run:
        """Start a run; OSError when it cannot start (then nothing is left behind)."""


class ScriptLauncher:
    """The real spawn adapter: scripts started by the keeper, output to the slot's log.

    Raises OSError when the log file cannot be opened. ``check`` checks a script
    (default ``script_check.check_script``).
    """

    def __init__(
        self,
        settings: SlotSettings,
        *,
        config_dir: Path,
        var_dir: Path,
        prefix: str,
        guardian: Guardian,
        own_ca_address: str | None = None,
        check: Callable[[Path], Awaitable[str]] = check_script,
    ):
        self.settings = settings
        self.config_dir = config_dir
        self.var_dir = var_dir
        self.prefix = prefix
        self.guardian = guardian
        self.own_ca_address = own_ca_address
        self._check = check
        self.output: OutputCapture = OutputCapture(
            var_dir / "logs" / f"{settings.name}.log",
            max_bytes=settings.log_max_bytes,
            backups=settings.log_backups,
        )
        self.notify: NotifyListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def open(self, loop: asyncio.AbstractEventLoop, on_notify: OnNotify) -> None:
        self._loop = loop
        self.notify = NotifyListener(self.settings.name, on_notify)
        self.notify.open(loop)

    def close(self) -> None:
        if self.notify is not None:
            self.notify.close()
        self.output.close()

    def missing(self) -> str:
        problem, _ = look(self.settings.script)
        return problem if problem.startswith("no script at") else ""

    def check(self) -> Awaitable[str]:
        return self._check(self.settings.script)

    async def spawn(
        self, on_output: Callable[[bytes], None], on_exit: Callable[[int], None]
    ) -> ScriptProcess:
        assert self._loop is not None and self.notify is not None, "open() first"
        env = script_environment(
            os.environ,
            slot=self.settings.name,
            config_dir=self.config_dir,
            var_dir=self.var_dir,
            kit_root=kit_root(),
            notify_socket=self.notify.address,
            prefix=self.prefix,
            macros=self.settings.macros,
            own_ca_address=self.own_ca_address,
        )
        return await ScriptProcess.spawn(
            [sys.executable, str(self.settings.script)],
            slot=self.settings.name,
            guardian=self.guardian,
            cwd=str(self.config_dir),
            env=env,
            on_output=on_output,
            on_exit=on_exit,
            loop=self._loop,
        )
