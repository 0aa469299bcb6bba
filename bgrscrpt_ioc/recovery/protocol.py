"""What the watch runner asks of a restart backend (the implementations: :mod:`.backend`)."""

from __future__ import annotations

from typing import Protocol


class RestartError(Exception):
    """A restart that did not happen as it should; the text says why, for MSG.

    ``reached``: False when the request certainly reached nothing that could
    restart the IOC (a peer that does not connect, or refuses before acting): such
    an attempt cannot have harmed the IOC, so it does not count towards LOCKOUT.
    """

    def __init__(self, text: str, *, reached: bool = True):
        super().__init__(text)
        self.reached = reached


class RestartBackend(Protocol):
    """Restarts one IOC at a time for one watch."""

    via: str
    """How, in words, for the log and a DRYRUN message: "procServ", "procServControl", …"""

    def label(self, ioc: str) -> str:
        """How MSG names ``ioc`` ("ZFCNTRL_01"; "T1 on IN:NDXEMU:" for a peer)."""
        ...

    async def restart(self, ioc: str) -> str:
        """Restart ``ioc``; return what happened, in words, for the log.

        Raises :class:`RestartError` (text for MSG) when it cannot.
        """
        ...
