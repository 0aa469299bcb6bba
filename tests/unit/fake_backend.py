"""A restart backend for unit tests of the watch runner: scripted per IOC, no I/O."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from bgrscrpt_ioc.recovery.backend import RestartError


class FakeBackend:
    """Restarts nothing; each IOC's restart does what ``outcomes`` says.

    An outcome is a text (returned), an exception (raised: a RestartError is a
    failure the backend reports, anything else a bug) or :data:`HANG` (waits
    until cancelled). An IOC not in ``outcomes`` restarts fine.
    """

    via = "fake"

    HANG = object()

    def __init__(
        self,
        outcomes: dict[str, object] | None = None,
        *,
        on_call: Callable[[str], None] | None = None,
    ):
        self.outcomes = dict(outcomes or {})
        self.calls: list[str] = []
        self.on_call = on_call
        self.entered = asyncio.Event()  # set when a restart is under way

    def label(self, ioc: str) -> str:
        return f"{ioc} (fake)"

    async def restart(self, ioc: str) -> str:
        self.calls.append(ioc)
        if self.on_call is not None:
            self.on_call(ioc)
        self.entered.set()
        outcome = self.outcomes.get(ioc, f"{ioc} restarted by the fake")
        if outcome is self.HANG:
            await asyncio.Event().wait()
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, str)
        return outcome


def refused(text: str) -> RestartError:
    return RestartError(text)
