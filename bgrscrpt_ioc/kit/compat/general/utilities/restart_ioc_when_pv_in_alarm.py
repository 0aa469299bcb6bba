"""``restart_ioc_when_pv_in_alarm`` as in ISIS's InstrumentScripts, for background scripts.

Usage, unchanged from an instrument::

    from general.utilities.restart_ioc_when_pv_in_alarm import restart_ioc_when_pv_in_alarm

    thread = restart_ioc_when_pv_in_alarm("ZF_STATUS", ["ZFCNTRL_01"], ["FAULT"])
    ...
    thread.stop()

Every ``wait_for_polling`` seconds the block's value is read as ``cget`` reads
it (an enum as its state's name, e.g. ``"FAULT"``); when it is one of
``error_states`` each IOC gets ``$(P)CS:PS:<IOC>:RESTART 1`` (IBEX's
procServControl), then the thread waits ``wait_between_restarts``. Unlike the
original, a block that does not answer is said clearly on stderr (once, and
again when it comes back) instead of ending the thread. For restarts that are
verified, backed off and locked out, use a ``[[watch]]`` entry of the IOC
instead.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Iterable

BLOCK_PREFIX = "CS:SB:"


class StoppableThread(threading.Thread):
    """A daemon thread with a ``stop()`` that ends it within moments, even mid-wait."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()

    def stopped(self) -> bool:
        return self._stop_event.is_set()

    _stopped = stopped  # the original's name

    def wait_or_stop(self, seconds: float) -> bool:
        """Wait ``seconds``; True when stop() was called meanwhile."""
        return self._stop_event.wait(seconds)


def restart_ioc_when_pv_in_alarm(
    block_to_monitor: str,
    iocs_to_restart: Iterable[str],
    error_states: Iterable[object],
    wait_between_restarts: float = 120,
    wait_for_polling: float = 10,
) -> StoppableThread:
    """Watch ``block_to_monitor``; restart ``iocs_to_restart`` when its value is an error state.

    Returns the running thread; ``stop()`` ends it.
    """
    iocs = list(iocs_to_restart)
    errors = list(error_states)
    thread = StoppableThread(
        target=_poll_and_restart,
        args=(block_to_monitor, errors, iocs, wait_between_restarts, wait_for_polling),
        name=f"restart_ioc_when_pv_in_alarm({block_to_monitor})",
        daemon=True,
    )
    thread.start()
    return thread


def _is_error(value: object, error_states: list[object]) -> bool:
    # As the original: the value as cget gives it, compared with ``in``.
    try:
        return value in error_states
    except Exception:  # an odd value (an array) is no error state
        return False


def _say(text: str) -> None:
    print(f"restart_ioc_when_pv_in_alarm: {text}", file=sys.stderr, flush=True)


def _poll_and_restart(
    block: str,
    error_states: list[object],
    iocs: list[str],
    wait_between_restarts: float,
    wait_for_polling: float,
) -> None:
    # Imported here: the script chooses its genie_python (real or the IOC's) first.
    from genie_python import genie as g
    from genie_python.genie_cachannel_wrapper import CaChannelWrapper

    thread = threading.current_thread()
    assert isinstance(thread, StoppableThread)
    missing = False
    while not thread.stopped():
        # The block's PV as cget reads it (in capitals), without cget's traceback on
        # every poll when the block is missing; the IOC's prefix when the script has
        # not called set_instrument.
        prefix = g.prefix_pv_name("") or os.environ.get("MYPVPREFIX", "")
        pv = prefix + BLOCK_PREFIX + block.upper()
        try:
            value = CaChannelWrapper.get_pv_value(pv)
        except Exception as exc:  # any Channel Access failure: say so and keep watching
            if not missing:
                _say(
                    f"block {block} ({pv}) does not answer: {exc}; is it in the "
                    "configuration? Still watching for it."
                )
                missing = True
        else:
            if missing:
                _say(f"block {block} answers again")
                missing = False
            if _is_error(value, error_states):
                for ioc in iocs:
                    print(f"Restarting {ioc}", flush=True)
                    try:
                        CaChannelWrapper.set_pv_value(f"{prefix}CS:PS:{ioc}:RESTART", 1)
                    except Exception as exc:
                        _say(f"cannot restart {ioc}: {exc}")
                if thread.wait_or_stop(wait_between_restarts):
                    return
        if thread.wait_or_stop(wait_for_polling):
            return
