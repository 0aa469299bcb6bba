"""A Channel Access client that runs on another host (a network namespace) and does
what the test asks, one JSON line in, one JSON line out, with pyepics (libca).

Run by :class:`tests.integration.netns_hosts.Agent`; the test process itself cannot
reach the namespaces' addresses (libca read its address list when it started).

Requests: ``{"op": "get", "pv": ..., **caget keywords}``,
``{"op": "put", "pv": ..., "value": ..., **caput keywords}``,
``{"op": "monitor", "pv": ...}`` (start recording what a monitor shows, with its
connection changes) and ``{"op": "history", "pv": ...}`` (what it recorded:
``[monotonic time, value as text or "<connected>"/"<disconnected>", server time
stamp]`` each).
Answers: ``{"ok": value}`` or ``{"error": text}``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
import warnings

import epics

warnings.filterwarnings("ignore")  # pyepics warns on every caget that times out
_lock = threading.Lock()
_history: dict[str, list[list]] = {}
_monitors: dict[str, epics.PV] = {}


def _plain(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, bytes):
        return value.decode(errors="replace")
    return value


def _record(pvname: str, what: object, stamp: float | None = None) -> None:
    """Each update: when it came (monotonic), what it was, the server's time stamp."""
    with _lock:
        _history[pvname].append([time.monotonic(), what, stamp])


def _monitor(pvname: str) -> None:
    if pvname in _monitors:
        return
    _history[pvname] = []
    _monitors[pvname] = epics.PV(
        pvname,
        form="ctrl",  # enums as their labels
        callback=lambda char_value=None, timestamp=None, **kw: _record(
            pvname, char_value, timestamp
        ),
        connection_callback=lambda conn=None, **kw: _record(
            pvname, "<connected>" if conn else "<disconnected>"
        ),
        auto_monitor=True,
    )


def handle(request: dict) -> object:
    op = request.pop("op")
    pvname = request.pop("pv")
    if op == "get":
        return _plain(epics.caget(pvname, **request))
    if op == "put":
        value = request.pop("value")
        return _plain(epics.caput(pvname, value, **request))
    if op == "monitor":
        _monitor(pvname)
        return True
    if op == "history":
        with _lock:
            return list(_history.get(pvname, []))
    raise ValueError(f"unknown op {op!r}")


def main() -> None:
    # Answers on a stdout of their own: pyepics and libca print on stdout too.
    answers = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def answer(message: dict) -> None:
        answers.write(json.dumps(message) + "\n")
        answers.flush()

    answer({"ok": "ready"})
    for line in sys.stdin:
        try:
            answer({"ok": handle(json.loads(line))})
        except Exception as exc:  # the test reads the reason
            answer({"error": f"{type(exc).__name__}: {exc}"})


if __name__ == "__main__":
    main()
