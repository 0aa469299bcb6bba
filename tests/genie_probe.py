"""Run genie_python calls and say what each returned and printed, as JSON lines.

``python tests/genie_probe.py PREFIX CALL...`` sets the instrument to PREFIX,
waits for the block server's names, then evaluates each CALL (a Python
expression using ``g`` = genie, ``W`` = CaChannelWrapper, ``E`` =
channel_access_exceptions, ``DAE_PVS_LOOKUP``, ``P`` = the prefix, ``time``)
and prints one JSON object per call: the result's type and repr, what the call
printed on stdout (clock times replaced by ``HH:MM:SS``) and the last line it
printed on stderr (a traceback's exception line); a CALL starting with ``~`` is
run without it. Whichever ``genie_python`` is
first on the path answers: the test runs this with IBEX's and with the IOC's.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import time

CLOCK = re.compile(r"\b\d\d:\d\d:\d\d\b")
STAMP = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+")


def normalise(text: str) -> str:
    return CLOCK.sub("HH:MM:SS", STAMP.sub("DATETIME", text))


def main() -> None:
    prefix, calls = sys.argv[1], sys.argv[2:]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import genie_python
        from genie_python import channel_access_exceptions as E  # noqa: N812
        from genie_python import genie as g
        from genie_python.genie_cachannel_wrapper import CaChannelWrapper as W
        from genie_python.genie_dae import DAE_PVS_LOOKUP

        before = g.prefix_pv_name("X")
        g.set_instrument(prefix, import_instrument_init=False)
        deadline = time.monotonic() + 10
        while not g.get_blocks() and time.monotonic() < deadline:
            time.sleep(0.05)
    space = {"g": g, "W": W, "E": E, "DAE_PVS_LOOKUP": DAE_PVS_LOOKUP, "P": prefix, "time": time}
    print(json.dumps({"where": genie_python.__file__, "prefix_before": before}), flush=True)
    for call in calls:
        out, err = io.StringIO(), io.StringIO()
        raised = None
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                value = eval(call.lstrip("~"), space)  # noqa: S307 - the test's own expressions
            except Exception as exc:  # a call that raises past genie's own handling
                value, raised = None, f"{type(exc).__name__}: {exc}"
        lines = err.getvalue().strip().splitlines()
        record = {
            "call": call,
            "type": type(value).__name__,
            "repr": normalise(repr(value)),
            "out": normalise(out.getvalue()),
            "err": normalise(lines[-1]) if lines else "",
            "raised": raised,
        }
        print(json.dumps(record), flush=True)


if __name__ == "__main__":
    main()
