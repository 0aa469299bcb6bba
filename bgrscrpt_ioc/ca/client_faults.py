"""What a Channel Access client did wrong, in one log line, at most once a minute per kind.

Anything a client sends can be wrong: garbage, a message too large, a request
the protocol does not allow, a type its PV cannot be converted to, a value a PV
refuses. None of it is the IOC's fault, so none of it gets a traceback; and as a
client can repeat it as fast as it likes, each kind of fault from one host is
logged at most once per :data:`INTERVAL` (the next line says how many were held
back). Exceptions that are not the client's doing (bugs of this IOC) keep their
traceback: :func:`is_client_fault` tells them apart.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable
from pathlib import Path

import caproto
from caproto import CaprotoError

from bgrscrpt_ioc.core.ratelimit import OncePerInterval

from .channels import PutRejected

log = logging.getLogger("bgrscrpt_ioc.ca")

INTERVAL = 60.0
_NAME_LIMIT = 64
_MESSAGE_LIMIT = 300

_CAPROTO_DIR = str(Path(caproto.__file__).resolve().parent)
_AMBIGUOUS = (ValueError, TypeError, LookupError, OverflowError, struct.error)
"""Raised by caproto for what a client sent, but by a bug just as well: told apart by origin."""


def is_client_fault(exc: BaseException) -> bool:
    """True when ``exc`` answers something the client sent, not a bug of this IOC.

    caproto's own errors (a protocol violation, a failed conversion, a refused
    access) and this IOC's refusals are the client's; so are ValueError,
    TypeError and the like when caproto raised them while handling the
    client's data. The same raised from this IOC's code is a bug.
    """
    if isinstance(exc, CaprotoError | PutRejected):
        return True
    if not isinstance(exc, _AMBIGUOUS):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    return str(Path(tb.tb_frame.f_code.co_filename).resolve()).startswith(_CAPROTO_DIR)


def one_line(text: object, limit: int = _MESSAGE_LIMIT) -> str:
    """``text`` as one printable line of at most ``limit`` characters."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else ""
    line = "".join(c if c.isprintable() else "?" for c in line)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def reason_of(exc: BaseException) -> str:
    """The exception's message, or its cause's when it has none (caproto's conversions)."""
    text = one_line(exc)
    if not text and exc.__cause__ is not None:
        text = one_line(exc.__cause__)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def describe_client(
    address: tuple[str, int] | None, hostname: str | None, username: str | None
) -> str:
    """``127.0.0.1:40522 (host 'ndxdemo', user 'spudulike')``: what names a client in the log."""
    where = f"{address[0]}:{address[1]}" if address else "?"
    host = one_line(hostname, _NAME_LIMIT) if hostname else "?"
    user = one_line(username, _NAME_LIMIT) if username else "?"
    return f"{where} (host {host!r}, user {user!r})"


class ClientFaults:
    """The one place client faults are logged: one line, at most once per host and kind."""

    def __init__(
        self, interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._limiter = OncePerInterval(interval)
        self._clock = clock

    def report(
        self,
        kind: str,
        message: str,
        *,
        address: tuple[str, int] | None,
        hostname: str | None = None,
        username: str | None = None,
    ) -> bool:
        """Log ``message`` about the client, unless this host had this kind lately; True if logged.

        ``kind`` names the fault ("protocol", "oversized", "request", "put",
        "slow"); the host is the client's IP address, which, unlike the host
        and user names, the client cannot choose freely.
        """
        ip = address[0] if address else "?"
        allowed, held = self._limiter.allow((ip, kind), self._clock())
        if not allowed:
            return False
        more = f" (and {held} more like it from {ip} since the last such line)" if held else ""
        log.warning(
            "CA client %s: %s%s",
            describe_client(address, hostname, username),
            one_line(message),
            more,
        )
        return True
