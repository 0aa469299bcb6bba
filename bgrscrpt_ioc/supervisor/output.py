"""A script's output: a size-rotated log file, the LOG tail, and the last exception.

Memory stays bounded whatever the script prints: at most ``tail_lines`` lines of
at most ``tail_chars`` characters, plus one partial line of the same bound. The
log file keeps the raw bytes; the tail and the summary are text, rendered as a
terminal shows them (``terminal.render``: no NUL or escape sequence reaches a
Channel Access client, a progress bar shows its last state).
"""

from __future__ import annotations

import logging
import os
import re
from collections import deque
from io import FileIO
from pathlib import Path

from bgrscrpt_ioc.supervisor.terminal import printable, render

log = logging.getLogger(__name__)

_HEADER = b"Traceback (most recent call last):"
# A SyntaxError in the script itself is printed without the header: File, source, caret.
_FILE = b'  File "'
# The first line of a traceback that is not indented ends it (blank lines do not).
_NOT_INDENTED = re.compile(rb"^[^ \t\r\n]", re.MULTILINE)
_ANY_SUMMARY = re.compile(r"[A-Za-z_][\w.]*(:.*)?")
_SYNTAX_SUMMARY = re.compile(r"(?:\w+\.)*(?:SyntaxError|IndentationError|TabError)(:.*)?")
_SUMMARY_CHARS = 200
_CUT = "…"


class OutputCapture:
    """Feed it a script's raw output; read ``tail`` and ``exception_summary``.

    The log file ``log_path`` is rotated by size like RotatingFileHandler
    (``X.log``, ``X.log.1`` … ``X.log.<backups>``) and written unbuffered, raw.
    The constructor creates the directory and opens the file (OSError if it
    cannot); after that a failing log write never raises: it is logged once and
    kept in ``log_error``, and the tail goes on working.
    """

    version: int

    def __init__(
        self,
        log_path: Path,
        *,
        max_bytes: int = 10_000_000,
        backups: int = 5,
        tail_lines: int = 20,
        tail_chars: int = 5120,
    ) -> None:
        if tail_lines < 1 or tail_chars < 2:
            raise ValueError("tail_lines must be >= 1 and tail_chars >= 2")
        self._path = Path(log_path)
        self._max_bytes = max_bytes
        self._backups = backups
        self._tail_lines = tail_lines
        self._tail_chars = tail_chars
        # A UTF-8 character is at most 4 bytes: this many bytes always hold tail_chars.
        self._line_bytes = 4 * tail_chars

        self.version = 0
        self.log_error = ""
        self._lines: deque[str] = deque(maxlen=tail_lines)
        self._partial = bytearray()
        self._partial_cut = False
        self._tail_cache: tuple[int, str] = (-1, "")
        # Traceback detector: None outside one, else which summary regex ends it.
        self._in_tb: re.Pattern[str] | None = None
        self._summary = ""

        self._closed = False
        self._file: FileIO | None = None
        self._size = 0
        self._log_at_line_start = True
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    # ---- input -------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        """A chunk of raw script output (stdout and stderr interleaved)."""
        if not data:
            return
        self._write_log(data)
        self.version += 1
        first_nl = data.find(b"\n")
        if first_nl < 0:
            self._extend_partial(data)
            return
        last_nl = data.rfind(b"\n")

        self._extend_partial(data[:first_nl])
        first_line, first_cut = bytes(self._partial), self._partial_cut
        self._partial.clear()
        self._partial_cut = False
        self._extend_partial(data[last_nl + 1 :])

        # Every complete line goes through the traceback detector (C-speed searches)...
        self._scan_tracebacks(first_line + b"\n" + data[first_nl + 1 : last_nl + 1])
        # ...but only the last tail_lines of them can reach the tail.
        self._add_line(first_line, first_cut)
        if last_nl > first_nl:
            rest = data[first_nl + 1 : last_nl].rsplit(b"\n", self._tail_lines)
            for raw in rest[-self._tail_lines :]:
                self._add_line(raw, False)

    def mark(self, text: str) -> None:
        """An IOC event line such as ``--- <time> started pid 123 ---``: log file only."""
        prefix = b"" if self._log_at_line_start else b"\n"
        self._write_log(prefix + text.encode("utf-8", "replace") + b"\n")

    def new_run(self) -> None:
        """A new run starts: forget the exception summary, end any unfinished line."""
        self._summary = ""
        self._in_tb = None
        if self._partial:
            self._add_line(bytes(self._partial), self._partial_cut)
            self._partial.clear()
            self._partial_cut = False
        self.version += 1

    def close(self) -> None:
        """Close the log file (idempotent); the tail stays readable."""
        self._closed = True
        if self._file is not None:
            self._file.close()
            self._file = None

    # ---- output ------------------------------------------------------------

    @property
    def tail(self) -> str:
        """The last ``tail_lines`` lines, at most ``tail_chars`` characters (the end is kept)."""
        if self._tail_cache[0] != self.version:
            lines = list(self._lines)
            if self._partial:
                lines.append(self._decode(bytes(self._partial), self._partial_cut))
            text = "\n".join(lines[-self._tail_lines :])[-self._tail_chars :]
            self._tail_cache = (self.version, text)
        return self._tail_cache[1]

    @property
    def exception_summary(self) -> str:
        """``"ZeroDivisionError: division by zero"`` from this run's last traceback, or ``""``."""
        if self._in_tb is not None and self._partial and _NOT_INDENTED.match(self._partial):
            # The summary line is out but its newline is not (the process died writing it).
            summary = self._summary_of(bytes(self._partial), self._in_tb)
            if summary:
                return summary
        return self._summary

    # ---- internals ---------------------------------------------------------

    def _extend_partial(self, data: bytes) -> None:
        if b"\r" in data:
            self._collapse(data)
            return
        if self._partial_cut or not data:
            return
        room = self._line_bytes - len(self._partial)
        if len(data) > room:
            data = data[:room]
            self._partial_cut = True
        self._partial += data

    def _collapse(self, data: bytes) -> None:
        """The partial line meets a carriage return: what comes before the last one is
        rendered now (it can only be overwritten from here on), so a progress bar that
        rewrites its line for hours keeps the partial line small and shows its last state."""
        buf = bytes(self._partial) + data
        cr = buf.rfind(b"\r")
        head = render(buf[:cr])
        cut = self._partial_cut or len(head) > self._tail_chars
        rest = buf[cr:]
        self._partial = bytearray(head[: self._tail_chars].encode("utf-8", "surrogateescape"))
        self._partial_cut = False
        self._extend_partial_plain(rest)
        self._partial_cut = self._partial_cut or (cut and len(rest) <= len(head) + 1)

    def _extend_partial_plain(self, data: bytes) -> None:
        room = self._line_bytes - len(self._partial)
        if len(data) > room:
            data = data[:room]
            self._partial_cut = True
        self._partial += data

    def _decode(self, raw: bytes, cut: bool) -> str:
        # A carriage return may bring back the end of a long line: render all of it then.
        text = render(raw if b"\r" in raw else raw[: self._line_bytes])
        if cut or len(text) > self._tail_chars:
            text = text[: self._tail_chars - 1] + _CUT
        return text

    def _add_line(self, raw: bytes, cut: bool) -> None:
        self._lines.append(self._decode(raw, cut or len(raw) > self._line_bytes))

    def _scan_tracebacks(self, region: bytes) -> None:
        """Follow tracebacks through ``region`` (complete lines, possibly many).

        Each step jumps with a C-level search to the next marker or to the line
        that ends the traceback, so the cost is per traceback, not per line. The
        state carries over to the next chunk.
        """
        # The next marker of each kind at or after pos; searched again only once passed,
        # so a chunk full of one marker does not rescan the rest for the other.
        found = {_HEADER: -2, _FILE: -2}

        def next_at(marker: bytes, pos: int) -> int:
            if found[marker] == -2 or 0 <= found[marker] < pos:
                found[marker] = _find_line_start(region, marker, pos)
            return found[marker]

        pos = 0
        while True:
            if self._in_tb is None:
                header, syntax = next_at(_HEADER, pos), next_at(_FILE, pos)
                if header < 0 and syntax < 0:
                    return
                if header >= 0 and (syntax < 0 or header < syntax):
                    start, self._in_tb = header, _ANY_SUMMARY
                else:
                    start, self._in_tb = syntax, _SYNTAX_SUMMARY
                pos = region.index(b"\n", start) + 1
                continue
            m = _NOT_INDENTED.search(region, pos)
            if m is None:
                return  # still inside; the rest comes in a later chunk
            end = region.index(b"\n", m.start())
            summary = self._summary_of(region[m.start() : end], self._in_tb)
            self._in_tb = None
            if summary:
                self._summary = summary
                pos = end + 1
            else:
                pos = m.start()  # not a summary after all: it may start a traceback itself

    @staticmethod
    def _summary_of(line: bytes, pattern: re.Pattern[str]) -> str:
        text = line[: 4 * _SUMMARY_CHARS].decode("utf-8", "replace").strip()
        if not pattern.fullmatch(text):
            return ""
        text = printable(text)
        if len(text) > _SUMMARY_CHARS:
            text = text[: _SUMMARY_CHARS - 1] + _CUT
        return text

    def _write_log(self, data: bytes) -> None:
        if self._closed:
            return
        try:
            if self._file is None:  # a rotation failed: try again
                self._open()
            if 0 < self._max_bytes < self._size + len(data) and self._size > 0:
                self._rotate()
            assert self._file is not None
            view = memoryview(data)
            while view:  # a raw FileIO may write less than asked
                n = self._file.write(view) or 0
                view = view[n:]
                self._size += n
        except OSError as exc:
            if not self.log_error:
                log.warning("cannot write %s: %s", self._path, exc)
            self.log_error = str(exc)
            return
        self.log_error = ""
        self._log_at_line_start = data.endswith(b"\n")

    def _open(self, mode: str = "ab") -> None:
        # Unbuffered: whoever reads the file sees the output as soon as it is fed.
        self._file = FileIO(self._path, mode)
        self._size = os.fstat(self._file.fileno()).st_size

    def _rotate(self) -> None:
        assert self._file is not None
        self._file.close()
        self._file = None
        if self._backups > 0:
            for i in range(self._backups - 1, 0, -1):
                older = Path(f"{self._path}.{i}")
                if older.exists():
                    os.replace(older, f"{self._path}.{i + 1}")
            os.replace(self._path, f"{self._path}.1")
            self._open()
        else:
            self._open("wb")  # no backups: start the file again


def _find_line_start(region: bytes, marker: bytes, pos: int) -> int:
    """Index of the first ``marker`` at the start of a line at or after ``pos``, else -1."""
    while True:
        i = region.find(marker, pos)
        if i <= 0 or region[i - 1] == 0x0A:
            return i
        pos = i + 1
