"""``genie.adv``: the advanced commands background scripts use."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from time import sleep
from typing import Any

from genie_python.genie_api_setup import _api, log_command_and_handle_exception
from genie_python.genie_waitfor import DELAY_IN_WAIT_FOR_SLEEP_LOOP


@log_command_and_handle_exception
def get_pv_from_block(block: str) -> str:
    """The full PV of a block: ``$(P)CS:SB:<BLOCK>`` (in capitals, as IBEX's gateway serves it)."""
    return _api.get_pv_from_block(block)


@log_command_and_handle_exception
def pv_exists(pv: str, is_local: bool = False) -> bool:
    """True when the PV connects within 3 s."""
    return _api.pv_exists(pv, is_local=is_local)


@log_command_and_handle_exception
def wait_for_pv(pv: str, value: Any, maxwait: float | None = None) -> None:
    """Wait until the PV reads ``value`` (or ``maxwait`` seconds have passed)."""
    started = datetime.now(UTC)
    while _api.get_pv_value(pv) != value:
        if maxwait is not None and timedelta(seconds=maxwait) < datetime.now(UTC) - started:
            break
        sleep(DELAY_IN_WAIT_FOR_SLEEP_LOOP)


@log_command_and_handle_exception
def get_instrument() -> str:
    """The instrument's name, e.g. ``DEMO``."""
    return _api.get_instrument()


@log_command_and_handle_exception
def get_instrument_full_name() -> str:
    """The instrument's machine, e.g. ``NDXDEMO``."""
    return _api.get_instrument_full_name()


@contextlib.contextmanager
def motor_in_set_mode(pv_name: str) -> Iterator[None]:
    """Put a motor record in SET mode with its offset frozen for the block, and back after."""
    if not _api.pv_exists(pv_name):
        raise ValueError("Cannot find pv " + pv_name)
    try:
        _api.set_pv_value(pv_name + ".SET", 1, True)
        offset = _api.get_pv_value(pv_name + ".FOFF")
        _api.set_pv_value(pv_name + ".FOFF", "Frozen", True)
    except OSError as ex:
        raise ValueError(f"Can not set motor set and frozen offset mode: {ex}") from ex
    try:
        yield
    finally:
        try:
            _api.set_pv_value(pv_name + ".SET", 0, True)
            _api.set_pv_value(pv_name + ".FOFF", offset, True)
        except OSError as ex:
            raise ValueError(f"Can not reset motor set and frozen offset mode: {ex}") from ex


def open_plot_window(
    is_primary: bool = True, host: Any = None, figures: list[int] | None = None
) -> str:
    """Say where this script's plots are served; the URL also goes to the slot's PLOT_URL.

    genie_python asks a running IBEX GUI to open its plot window; here the page is
    served by the script itself, so this returns its URL (empty when the script
    serves no plot yet) and prints it.
    """
    try:
        from bgrscrpt_ioc.plot import server

        url = server.publish_current_url()
    except Exception as exc:  # the plot is a convenience: never break the script
        print(f"open_plot_window: {exc}", file=sys.stderr)
        return ""
    if url:
        print(f"plot window: {url}")
    else:
        print("open_plot_window: this script serves no plot yet", file=sys.stderr)
    return url
