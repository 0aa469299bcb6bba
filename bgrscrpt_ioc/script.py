"""Helpers for scripts run by bgrscrpt_ioc: tell the IOC you are up, alive, and what you do.

Usage in a background script::

    from bgrscrpt_ioc import script

    script.register()               # REGISTERED goes to Yes (READY=1)
    while True:
        do_some_work()
        script.status("waiting for run 1234")   # shown in the slot's MSG
        script.beat()               # feeds the slot's WATCHDOG, if one is set

Every call returns True when the message was sent and False otherwise (for
example when the script is not run by bgrscrpt_ioc); none of them ever raises.
The messages are datagrams in the style of systemd's ``sd_notify``, sent to
``$NOTIFY_SOCKET``.
"""

from __future__ import annotations

import os
import socket

__all__ = ["beat", "notify", "register", "status"]

# Long enough to ride out a busy IOC, short enough not to stall a script if it hangs.
_SEND_TIMEOUT = 1.0


def notify(**fields: object) -> bool:
    """Send ``KEY=value`` fields in one datagram, e.g. ``notify(READY=1, STATUS="ok")``.

    Newlines in values become spaces (a newline separates fields). Returns
    False, never raises, when ``$NOTIFY_SOCKET`` is unset or the send fails.
    """
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or not fields:
        return False
    if address.startswith("@"):  # Linux abstract namespace, as in systemd
        address = "\0" + address[1:]
    lines = (f"{key}={str(value).replace(chr(10), ' ')}" for key, value in fields.items())
    try:
        message = "\n".join(lines).encode("utf-8", "replace")
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(_SEND_TIMEOUT)
            sock.sendto(message, address)
    except Exception:  # a helper for scripts: reporting must never break the script
        return False
    return True


def register() -> bool:
    """Tell the IOC the script is up (``READY=1``): the slot's REGISTERED shows Yes."""
    return notify(READY=1)


def beat() -> bool:
    """A watchdog beat (``WATCHDOG=1``); call it more often than the slot's WATCHDOG period."""
    return notify(WATCHDOG=1)


def status(text: str) -> bool:
    """Status text for the slot's MSG (``STATUS=text``; newlines become spaces)."""
    return notify(STATUS=text)
