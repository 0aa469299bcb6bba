"""Fakes for the slot runner's adapters: its spawn adapter (``supervisor.launcher``)
and a clock whose time moves only when the test says so.

:class:`FakeLauncher` starts no process: each spawn gives a :class:`FakeRun` the
test drives (``run.prints(b"…")``, ``run.exits(1)``) and that records the signals
sent to it. :class:`FakeClock` is a monotonic clock with ``call_later`` timers that
fire, in order, as :meth:`FakeClock.advance` moves time on.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field


class FakeOutput:
    """Keeps what the runner writes: each run's output and the lines it marks."""

    def __init__(self) -> None:
        self.tail = ""
        self.exception_summary = ""
        self.marks: list[str] = []
        self.runs = 0
        self.closed = False

    def new_run(self) -> None:
        self.runs += 1

    def feed(self, data: bytes) -> None:
        self.tail += data.decode()

    def mark(self, text: str) -> None:
        self.marks.append(text)

    def close(self) -> None:
        self.closed = True


class FakeRun:
    """One run the test drives."""

    def __init__(
        self, pid: int, on_output: Callable[[bytes], None], on_exit: Callable[[int], None]
    ):
        self.pid = pid
        self.signals: list[int] = []
        self.closed = False
        self._on_output = on_output
        self._on_exit = on_exit

    def signal_all(self, signum: int) -> None:
        self.signals.append(signum)

    def close(self) -> None:
        self.closed = True

    def prints(self, data: bytes) -> None:
        self._on_output(data)

    def exits(self, returncode: int) -> None:
        self._on_exit(returncode)


class FakeLauncher:
    """The spawn adapter, without processes. ``problem`` fails the check; ``refuse``
    (an OSError) makes spawn raise it; ``missing`` is what ``missing()`` answers."""

    def __init__(self, *, missing: str = "") -> None:
        self.output = FakeOutput()
        self.runs: list[FakeRun] = []
        self.problem = ""
        self.refuse: OSError | None = None
        self.on_notify: Callable[[dict[str, str]], None] | None = None
        self.opened = self.closed = False
        self._missing = missing
        self._pids = itertools.count(4001)

    @property
    def run(self) -> FakeRun:
        """The latest run."""
        return self.runs[-1]

    def open(
        self, loop: asyncio.AbstractEventLoop, on_notify: Callable[[dict[str, str]], None]
    ) -> None:
        self.opened = True
        self.on_notify = on_notify

    def close(self) -> None:
        self.closed = True

    def missing(self) -> str:
        return self._missing

    async def check(self) -> str:
        return self.problem

    async def spawn(
        self, on_output: Callable[[bytes], None], on_exit: Callable[[int], None]
    ) -> FakeRun:
        if self.refuse is not None:
            raise self.refuse
        run = FakeRun(next(self._pids), on_output, on_exit)
        self.runs.append(run)
        return run

    def notify(self, **fields: str) -> None:
        """A datagram from the script: ``notify(READY="1")``."""
        assert self.on_notify is not None, "the runner has not opened the launcher"
        self.on_notify(dict(fields))


@dataclass(order=True)
class _Timer:
    when: float
    seq: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Monotonic seconds that move only on :meth:`advance`, with ``call_later`` timers."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now
        self._timers: list[_Timer] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self.now + max(delay, 0.0), next(self._seq), callback)
        self._timers.append(timer)
        return timer

    @property
    def pending(self) -> list[float]:
        """When the timers not yet fired nor cancelled are due, soonest first."""
        return sorted(t.when for t in self._timers if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, firing each timer due meanwhile at its own time."""
        end = self.now + seconds
        while True:
            due = sorted(t for t in self._timers if not t.cancelled and t.when <= end)
            if not due:
                break
            timer = due[0]
            self._timers.remove(timer)
            self.now = max(self.now, timer.when)
            timer.callback()
        self.now = end
