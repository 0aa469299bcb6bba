"""Two small asyncio helpers the runners and the IOC share.

:class:`DeadlineTimer` wakes a runner when its core's next deadline is due (one
``call_later`` handle, re-armed after every look at the core), with the guard
against a core that leaves a deadline due after a tick. :func:`cancel_and_wait`
ends tasks for certain, cancelling again when a cancellation was lost.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

STALE_DEADLINE_RETRY = 0.5
"""A deadline a tick has already passed is a core bug: look again this much later, not at once."""

log = logging.getLogger(__name__)


class Handle(Protocol):
    def cancel(self) -> None: ...


CallLater = Callable[[float, Callable[[], None]], Handle]
"""``loop.call_later`` without its extra arguments: what a fake clock stands in for."""


class DeadlineTimer:
    """Calls ``fire(now)`` once the deadline last armed is due; at most one is pending.

    ``clock`` and ``call_later`` default to ``time.monotonic`` and the running loop's
    ``call_later``; a test passes a fake clock's. ``name`` and ``state`` (the core's
    state, in words) make the one log line a broken deadline gets.
    """

    def __init__(
        self,
        name: str,
        fire: Callable[[float], None],
        *,
        state: Callable[[], str],
        logger: logging.Logger = log,
        clock: Callable[[], float] = time.monotonic,
        call_later: CallLater | None = None,
    ) -> None:
        self.name = name
        self.clock = clock
        self._fire = fire
        self._state = state
        self._log = logger
        self._call_later = call_later
        self._handle: Handle | None = None
        self._soon = False  # the pending wake-up is one asked for "at once"
        self.last_fired = -math.inf
        self.failed: BaseException | None = None  # what a fire raised (the timer is then idle)
        self._stale_logged = False

    @property
    def armed(self) -> bool:
        return self._handle is not None

    def guard(self, deadline: float) -> float:
        """``deadline``, unless the last tick already passed it: then a retry a little later.

        A core promises that a tick moves every due deadline on; if one broke that
        promise, waking at once would tick again and again, holding the loop. Logged
        once per timer.
        """
        if deadline > self.last_fired:
            return deadline
        if not self._stale_logged:
            self._stale_logged = True
            self._log.error(
                "%s: a tick at %.3f left the deadline %.3f due (state %s); "
                "re-checking every %g s (a bug: please report)",
                self.name,
                self.last_fired,
                deadline,
                self._state(),
                STALE_DEADLINE_RETRY,
            )
        return self.clock() + STALE_DEADLINE_RETRY

    def arm(self, deadline: float | None) -> None:
        """Fire at ``deadline`` (monotonic seconds) instead of any time armed before;
        None or infinity: not at all."""
        self.cancel()
        if deadline is None or math.isinf(deadline):
            return
        self._handle = self._later(max(deadline - self.clock(), 0.0))

    def soon(self) -> None:
        """Fire at the loop's next turn; wake-ups asked for before then are one."""
        if self._soon:
            return
        self.cancel()
        self._soon = True
        self._handle = self._later(0.0)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._soon = False

    def _later(self, delay: float) -> Handle:
        call_later = self._call_later or asyncio.get_running_loop().call_later
        return call_later(delay, self._run)

    def _run(self) -> None:
        self._handle = None
        self._soon = False
        self.last_fired = self.clock()
        try:
            self._fire(self.last_fired)
        except BaseException as exc:  # a bug: the loop logs it; the owner can see it here
            self.failed = exc
            raise


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]],
    timeout: float = 5.0,
    *,
    what: str = "",
    logger: logging.Logger = log,
) -> bool:
    """Cancel ``tasks`` and wait until they have ended, cancelling again as needed.

    A cancellation can be lost: Python 3.11's ``asyncio.wait_for`` swallows one
    that arrives just as its inner wait completes, and a task waiting on it would
    then outlive a shutdown. How each task ended is retrieved (no news at
    shutdown). Returns whether every task ended within ``timeout`` s; the ones
    that did not are logged (``what`` says whose they are).
    """
    tasks = list(tasks)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pending = [task for task in tasks if not task.done()]
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=0.1)
        pending = [task for task in pending if not task.done()]
    for task in tasks:
        if task.done() and not task.cancelled() and task.exception() is not None:
            logger.debug("%s ended with %r", task, task.exception())
    if pending:
        whose = f"{what}: " if what else ""
        logger.warning("%s%d task(s) did not end when cancelled: %s", whose, len(pending), pending)
    return not pending
