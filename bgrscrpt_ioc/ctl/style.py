"""Colour for a terminal, plain text for a pipe: what each state looks like."""

from __future__ import annotations

import os
from typing import TextIO

RESET = "\033[0m"
GREEN, YELLOW, RED, MAGENTA, DIM, BOLD = (
    "\033[32m",
    "\033[33m",
    "\033[31m",
    "\033[35m",
    "\033[2m",
    "\033[1m",
)

# The colours an operator reads at a glance: green healthy, yellow in trouble but
# working on it, red needs a person, dim deliberately off.
STATE_COLOURS = {
    # slots
    "RUNNING": GREEN,
    "STARTING": YELLOW,
    "BACKOFF": YELLOW,
    "STOPPING": YELLOW,
    "STOPPED": DIM,
    "EXITED": DIM,
    "FATAL": RED,
    # watches
    "OK": GREEN,
    "DISABLED": DIM,
    "PENDING": YELLOW,
    "RESTARTING": YELLOW,
    "VERIFYING": YELLOW,
    "FAILED": RED,
    "LOCKOUT": RED,
    # alarm severities
    "NO_ALARM": GREEN,
    "MINOR": YELLOW,
    "MAJOR": RED,
    "INVALID": MAGENTA,
    "DISCONNECTED": MAGENTA,
}


def use_colour(stream: TextIO, choice: str) -> bool:
    """``choice`` is always, never or auto (a terminal, and NO_COLOR unset)."""
    if choice == "always":
        return True
    if choice == "never" or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


class Style:
    def __init__(self, colour: bool):
        self.colour = colour

    def paint(self, text: str, code: str) -> str:
        return f"{code}{text}{RESET}" if self.colour and code else text

    def state(self, text: str, width: int = 0) -> str:
        """A state name padded to ``width``, coloured by what it means."""
        return self.paint(text.ljust(width), STATE_COLOURS.get(text, ""))

    def bold(self, text: str) -> str:
        return self.paint(text, BOLD)

    def error(self, text: str) -> str:
        return self.paint(text, RED)

    def ok(self, text: str) -> str:
        return self.paint(text, GREEN)
