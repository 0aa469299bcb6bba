"""A put answered as soon as its PV has accepted it, before the PV stores it.

A put's reply (WriteNotifyResponse) tells the client its put is done. caproto
answers once ``ChannelData.write`` has returned: the value checked, the putter
run (the controller has taken the value), and then the value, its time and
alarm stored and its monitor update noted. Measured with pyepics'
``caput(wait=True)`` against EPICS base (``make bench``, figure 2, runs of the
two builds interleaved), answering between the two took the put's p50 from
1.36-1.41 to 1.22-1.28 times base's: the client goes on with the reply while
the IOC stores.

No one can tell the difference. The store follows in the same step of the
event loop and waits for nothing, so no request of this client or any other,
and no task of the IOC, runs between the reply and the store: whatever reads
the PV after the reply reads the new value. Only channel classes whose store
waits for nothing take part, by calling :func:`accepted`: the writable classes
of :mod:`~bgrscrpt_ioc.ca.channels`, whose store is caproto's own
``ChannelData.write`` with its value already checked. A store that fails after
the answer is a bug of this IOC: the circuit logs it with its traceback
(caproto has then set the PV's alarm to WRITE/MAJOR, as for any failed write).

The circuit asks for it (:func:`answer_on_accept`) only for a put whose reply
does not depend on the store: one to a scalar PV (the reply carries the PV's
element count after the write, 1).
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar
from typing import Any


class Answer:
    """The reply to one put, sent by :func:`accepted` or, if no channel accepted
    it that way, by the circuit after the write."""

    __slots__ = ("channel", "send", "sent", "open")

    def __init__(self, channel: Any, send: Callable[[], None]) -> None:
        self.channel = channel
        self.send = send
        self.sent = False
        self.open = True
        """False once sent or once the put's write is over: a task the putter
        started (it inherits the context) can no longer answer it."""


_PENDING: ContextVar[Answer | None] = ContextVar("bgrscrpt_put_answer", default=None)


def answer_on_accept(channel: Any, send: Callable[[], None]) -> Answer:
    """The put this task is about to write to ``channel`` is answered by ``send()``
    once ``channel`` accepts it; end it with :func:`answer_ended`."""
    answer = Answer(channel, send)
    _PENDING.set(answer)
    return answer


def answer_ended() -> None:
    """The put's write is over: no later write answers it."""
    answer = _PENDING.get()
    if answer is not None:
        answer.open = False
    _PENDING.set(None)


def accepted(channel: Any) -> None:
    """``channel`` has accepted a put (checked it, run its putter) and is about to
    store it, without waiting for anything: if that put is the one the circuit is
    answering, send its answer now. Called by channel classes."""
    answer = _PENDING.get()
    if answer is not None and answer.open and answer.channel is channel:
        _PENDING.set(None)
        answer.open = False
        answer.sent = True
        answer.send()
