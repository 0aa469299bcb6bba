"""A script's raw output bytes as one line of plain text, the way a terminal shows it.

LOG goes to Channel Access clients as a C string: a NUL byte there ends it for
every C client (``caget -S``, CS-Studio), and ANSI colour codes, BEL or a
progress bar's carriage returns make it unreadable. So each line of output is
rendered before it reaches the tail:

- ANSI escape sequences (CSI ``ESC [ … m``, OSC ``ESC ] … BEL``, DCS/APC/PM/SOS,
  two-byte escapes, 8-bit CSI) are removed;
- ``\\r`` returns to the start of the line and what follows overwrites what was
  there, so a progress bar shows its last state;
- every other control character (NUL, BEL, backspace, ESC left over, DEL, C1)
  and every byte that is not valid UTF-8 is shown as ``\\xNN``; tab stays.

Pure functions, no state: the caller bounds how much it passes in.
"""

from __future__ import annotations

import re

# What may need work: any control byte but tab, or anything outside ASCII.
_NEEDS_WORK = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f-\xff]")
_ANSI = re.compile(
    r"""
      \x1b\[ [0-?]* [ -/]* [@-~]           # CSI: ESC [ parameters intermediates final
    | \x9b [0-?]* [ -/]* [@-~]             # the same, 8-bit
    | \x1b\] [^\x07\x1b]* (?:\x07|\x1b\\)? # OSC (window title, hyperlink) to BEL or ST
    | \x1b [PX^_] [^\x1b]* (?:\x1b\\)?     # DCS, SOS, PM, APC to ST
    | \x1b [ -/]* [0-~]                    # any other escape: ESC ( B, ESC 7, ESC c …
    """,
    re.VERBOSE,
)
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
# How many of a line's last carriage-return segments are overlaid exactly; the
# older ones contribute only their longest (a flood of \r stays cheap).
_EXACT_SEGMENTS = 64


def _visible(match: re.Match[str]) -> str:
    return f"\\x{ord(match.group()):02x}"


def clean(raw: bytes) -> str:
    """``raw`` (no ``\\r``, no ``\\n``) as text: escapes removed, controls made visible."""
    if not _NEEDS_WORK.search(raw):
        return raw.decode("ascii")
    text = raw.decode("utf-8", "backslashreplace")
    if "\x1b" in text or "\x9b" in text:
        text = _ANSI.sub("", text)
    return _CONTROL.sub(_visible, text)


def render(raw: bytes) -> str:
    """One line of output (without its ``\\n``) as a terminal would show it, as text."""
    if b"\r" not in raw:
        return clean(raw)
    head, *tail = raw.rsplit(b"\r", _EXACT_SEGMENTS)
    if tail and b"\r" in head:
        # Beyond the last segments only the longest older one can still show.
        head = max(head.split(b"\r"), key=len)
    screen = ""
    for segment in (head, *tail):
        text = clean(segment)
        screen = text + screen[len(text) :]
    return screen


def printable(text: str) -> str:
    """Text from anywhere (a status message, an exception summary) made safe the same way."""
    if text.isprintable():
        return text
    return render(text.replace("\n", " ").encode("utf-8", "surrogateescape"))
