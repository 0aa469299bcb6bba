"""One CA client of figure 3: ``python -m bench.monitor_client PVLIST``.

A pyepics (libca) process that monitors every PV named in the file PVLIST (one
per line) with a counting callback, prints ``ready <connected>`` once every
channel is connected and its first update has arrived, and keeps monitoring
until its stdin closes; then prints ``result <json>`` (updates and bytes received
since ready, in total and per PV) and exits.
The address list comes from the environment the bench set up.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import epics


def main() -> int:
    with open(sys.argv[1]) as f:
        names = [n.strip() for n in f.read().splitlines() if n.strip()]
    lock = threading.Lock()
    counts = {"updates": 0, "bytes": 0}
    per_pv: dict[str, int] = {}
    seen: set[str] = set()

    def on_update(pvname: str = "", value=None, **_kw) -> None:
        size = getattr(value, "nbytes", None)
        with lock:
            counts["updates"] += 1
            counts["bytes"] += int(size) if size is not None else 8
            per_pv[pvname] = per_pv.get(pvname, 0) + 1
            seen.add(pvname)

    pvs = [epics.PV(n, auto_monitor=True, callback=on_update) for n in names]
    deadline = time.monotonic() + 60.0
    while time.monotonic() < deadline:
        with lock:
            done = len(seen) == len(names)
        if done:
            break
        time.sleep(0.05)
    connected = sum(1 for pv in pvs if pv.connected)
    with lock:
        first = len(seen)
    print(f"ready {connected} {first}", flush=True)
    with lock:
        counts["updates"] = 0
        counts["bytes"] = 0
        per_pv.clear()
    sys.stdin.read()  # until the bench closes our stdin
    with lock:
        print("result " + json.dumps(dict(counts, per_pv=per_pv)), flush=True)
    # No libca teardown: the kernel closes the circuits, and 50 clients exit at once.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
