"""What procServ says on its control port, as events (no sockets here).

procServ writes human-readable ``@@@`` lines mixed with the child's console
output and a few telnet negotiation bytes. Each ``@@@`` line is parsed on its
own, in the wordings of procServ 2.7 ("auto restart is OFF", "Toggled auto
restart to ON") and 2.8+ ("auto restart mode is OFF", "Toggled auto restart
mode to ONESHOT"). Anything else is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

KILL = b"\x18"  # ^X: kill the child; with no child, start one
TOGGLE = b"\x14"  # ^T: toggle the auto-restart mode

MODES = ("ON", "OFF", "ONESHOT")


@dataclass(frozen=True)
class Greeting:
    """procServ's first line: it is procServ, and this version."""

    version: str


@dataclass(frozen=True)
class Mode:
    """The auto-restart mode: from the greeting, or ``toggled`` by ^T."""

    mode: str
    toggled: bool
    can_toggle: bool = True


@dataclass(frozen=True)
class ChildRunning:
    """The greeting's "Child "NAME" PID: N"."""

    pid: int


@dataclass(frozen=True)
class ChildShutDown:
    """The greeting's "Child "NAME" is SHUT DOWN": no child runs now."""


@dataclass(frozen=True)
class GreetingDone:
    """The last line of the greeting ("N user(s) and M logger(s) connected")."""


@dataclass(frozen=True)
class ShuttingDown:
    """The child has gone; procServ will (``autorestart``) or will not start another."""

    autorestart: bool


@dataclass(frozen=True)
class ChildExited:
    """procServ reaped the child ``pid``."""

    pid: int


@dataclass(frozen=True)
class NewChild:
    """A new child runs with ``pid``."""

    pid: int


Event = (
    Greeting | Mode | ChildRunning | ChildShutDown | GreetingDone | ShuttingDown | ChildExited
) | NewChild

_PATTERNS: list[tuple[re.Pattern[str], type]] = [
    (re.compile(r"@@@ Welcome to procServ \(procServ Process Server ([^)]*)\)"), Greeting),
    (re.compile(r"@@@ Child \"[^\"]*\" PID: (\d+)"), ChildRunning),
    (re.compile(r"@@@ Child \"[^\"]*\" is SHUT DOWN"), ChildShutDown),
    (re.compile(r"@@@ \d+ user\(s\) and \d+ logger\(s\) connected"), GreetingDone),
    (re.compile(r"@@@ Received a sigChild for process (\d+)"), ChildExited),
    (re.compile(r"@@@ The PID of new child \"[^\"]*\" is: (\d+)"), NewChild),
]
_GREETING_MODE = re.compile(r"auto restart (?:mode )?is (ON|OFF|ONESHOT)\b")
_TOGGLED = re.compile(r"@@@ Toggled auto restart (?:mode )?to (ON|OFF|ONESHOT)\b")
_SHUTTING_DOWN = re.compile(r"@@@ Child process is shutting down, (.*)")


def parse_line(line: str) -> Event | None:
    """The event one line of procServ output stands for, or None.

    The ``@@@`` may follow child output on the same line (a prompt with no
    newline), so the patterns are searched for, not anchored.
    """
    if "@@@" not in line:
        return None
    match = _TOGGLED.search(line)
    if match:
        return Mode(match.group(1), toggled=True)
    if "@@@ Use " in line or "@@@ Kill command disabled" in line:
        match = _GREETING_MODE.search(line)
        if match:
            return Mode(match.group(1), toggled=False, can_toggle="toggle disabled" not in line)
    match = _SHUTTING_DOWN.search(line)
    if match:
        return ShuttingDown(autorestart="restarted shortly" in match.group(1))
    for pattern, kind in _PATTERNS:
        match = pattern.search(line)
        if match:
            if kind in (ChildShutDown, GreetingDone):
                return kind()
            if kind is Greeting:
                return Greeting(match.group(1))
            return kind(int(match.group(1)))
    return None


def kill_enabled(line: str) -> bool | None:
    """From the greeting's mode line: may ^X kill the child (None: not that line)."""
    if "@@@ Kill command disabled" in line:
        return False
    if re.search(r"@@@ Use \S+ to kill the child", line):
        return True
    return None


MAX_LINE = 64 * 1024
"""Bytes of one line at most: procServ's lines are short; a peer that sends more is no procServ."""


class LineTooLong(ValueError):
    """A line longer than MAX_LINE: whatever sends it does not talk like procServ."""


class LineReader:
    """Turns the control port's bytes into text lines.

    Telnet commands (IAC …) are dropped; lines end at LF, CR is dropped. A
    partial line is kept until its end arrives, up to ``max_line`` bytes: one
    longer raises :class:`LineTooLong` (memory stays bounded whatever the peer sends).
    """

    IAC = 0xFF

    def __init__(self, max_line: int = MAX_LINE) -> None:
        self.max_line = max_line
        self._buf = bytearray()
        self._skip = 0  # bytes of a telnet command still to drop
        self._iac = False  # the last byte was IAC
        self._pending_subneg = False  # the command being skipped opens a subnegotiation
        self._in_subneg = False
        self._last_iac = False  # inside a subnegotiation, the last byte was IAC

    def feed(self, data: bytes) -> list[str]:
        """The lines ``data`` completes. Raises LineTooLong past ``max_line`` bytes in one line."""
        if not self._skip and not self._in_subneg and not self._iac and self.IAC not in data:
            return self._feed_plain(data)  # the usual case, without a Python loop per byte
        lines: list[str] = []
        for byte in data:
            if self._skip:
                self._skip -= 1
                if self._skip == 0 and self._pending_subneg:
                    self._in_subneg = True
                continue
            if self._in_subneg:
                # IAC SB ... IAC SE: wait for SE (0xF0) after an IAC
                if self._last_iac and byte == 0xF0:
                    self._in_subneg = False
                self._last_iac = byte == self.IAC
                continue
            if self._iac:
                self._iac = False
                if byte == self.IAC:  # an escaped 0xFF data byte
                    self._buf.append(byte)
                elif byte in (0xFB, 0xFC, 0xFD, 0xFE):  # WILL WONT DO DONT <option>
                    self._skip, self._pending_subneg = 1, False
                elif byte == 0xFA:  # SB <option> ... IAC SE
                    self._skip, self._pending_subneg = 1, True
                    self._last_iac = False
                continue
            if byte == self.IAC:
                self._iac = True
                continue
            if byte == 0x0A:
                lines.append(self._buf.decode("utf-8", "replace").rstrip("\r"))
                self._buf.clear()
            elif byte != 0x0D:
                self._buf.append(byte)
                if len(self._buf) > self.max_line:
                    raise LineTooLong(f"a line of more than {self.max_line} bytes")
        return lines

    def _feed_plain(self, data: bytes) -> list[str]:
        """``feed`` for data with no telnet command in it (and none under way)."""
        lines: list[str] = []
        pieces = data.split(b"\n")
        for index, piece in enumerate(pieces):
            piece = piece.replace(b"\r", b"")
            if len(self._buf) + len(piece) > self.max_line:
                raise LineTooLong(f"a line of more than {self.max_line} bytes")
            self._buf += piece
            if index < len(pieces) - 1:  # a newline followed this piece
                lines.append(self._buf.decode("utf-8", "replace"))
                self._buf.clear()
        return lines

    @property
    def partial(self) -> str:
        """The start of a line not yet ended (a prompt, say)."""
        return self._buf.decode("utf-8", "replace")
