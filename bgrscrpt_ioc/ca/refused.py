"""A read or write the server refused: its error reply is the answer, at once.

caproto's clients (asyncio and threading alike) ignore the ErrorResponse to a
read or write that is waited for: the caller waits out its whole timeout and
gets a timeout instead of the server's words. Both circuit managers here hand
such a reply to :func:`take_refused`, as libca calls back with the error status.
"""

from __future__ import annotations

from typing import Any

import caproto as ca

_ANSWERED = (ca.ReadNotifyRequest.ID, ca.WriteNotifyRequest.ID)


def take_refused(ioids: dict[int, dict[str, Any]], error: Any) -> dict[str, Any] | None:
    """The waiting request ``error`` refuses, taken out of ``ioids`` with its event set
    (its ``response`` is the error); None when nothing waits for it. The caller
    runs the request's ``callback``, if any, in its own way."""
    request = error.original_request
    if request.command not in _ANSWERED:
        return None
    ioid_info = ioids.pop(request.parameter2, None)  # the request's ioid
    if ioid_info is None:
        return None
    event = ioid_info.get("event")
    if event is not None:
        ioid_info["response"] = error
        event.set()
    return ioid_info
