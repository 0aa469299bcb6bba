"""``genie_python.genie`` for background scripts: the commands they call, answering as
IBEX's genie_python does.

Usage, as on an instrument::

    from genie_python import genie as g

    g.set_instrument(None)          # the prefix from $MYPVPREFIX (the IOC sets it)
    g.cget("Temp_Sample")           # OrderedDict: connected, name, value, unit, runcontrol, ...
    g.cset("Temp_SP", 300)
    g.get_pv("DAE:RUNSTATE", is_local=True)   # 'RUNNING': enums read as their states
    g.waitfor_time(seconds=10)

Every command prints the traceback of whatever goes wrong to stderr and returns
``None`` (a missing PV, a block that does not exist), as genie_python does;
``g.toggle.exceptions_raised(True)`` makes them raise instead. Which commands
exist, and where they differ from genie_python, is in the table of docs/scripts.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import genie_python.genie_advanced as adv  # noqa: F401 - g.adv
import genie_python.genie_toggle_settings as toggle  # noqa: F401 - g.toggle
from genie_python.genie_api_setup import (  # noqa: F401 - re-exported as genie_python does
    _api as _genie_api,
)
from genie_python.genie_api_setup import (
    get_user_script_dir,
    log_command_and_handle_exception,
    my_pv_prefix,
)
from genie_python.genie_toggle_settings import ToggleSettings
from genie_python.utilities import check_lowlimit_against_highlimit

__all__ = [
    "adv",
    "cget",
    "check_alarms",
    "check_limit_violations",
    "connected_pvs_in_list",
    "cset",
    "cshow",
    "get_block_units",
    "get_blocks",
    "get_events",
    "get_frames",
    "get_mevents",
    "get_number_periods",
    "get_period",
    "get_pv",
    "get_raw_frames",
    "get_rb",
    "get_runnumber",
    "get_runstate",
    "get_script_dir",
    "get_time_since_begin",
    "get_title",
    "get_totalcounts",
    "get_uamps",
    "get_users",
    "my_pv_prefix",
    "prefix_pv_name",
    "set_instrument",
    "set_pv",
    "toggle",
    "waitfor",
    "waitfor_block",
    "waitfor_frames",
    "waitfor_mevents",
    "waitfor_move",
    "waitfor_raw_frames",
    "waitfor_runstate",
    "waitfor_time",
    "waitfor_uamps",
]


def _waitfor_ready(command: str, error: type[Exception] = Exception) -> Any:
    if _genie_api.waitfor is None:
        raise error(f"Cannot execute {command} - try calling set_instrument first")
    return _genie_api.waitfor


def _dae() -> Any:
    assert _genie_api.dae is not None  # as genie_python: set_instrument first
    return _genie_api.dae


# ---- the instrument and PVs ------------------------------------------------------


@log_command_and_handle_exception
def set_instrument(pv_prefix: str | None, import_instrument_init: bool = True) -> None:
    """Choose the instrument. ``None``: the prefix in ``$MYPVPREFIX`` (where genie_python
    derives one from the host name); ``"IN:DEMO:"``, ``"NDXDEMO"`` or ``"DEMO"``: as
    IBEX derives it (``IN:DEMO:``, ``IN:DEMO:``, ``TE:DEMO:``). Runs ``init_<inst>``
    when one is on the path and ``import_instrument_init`` is true."""
    _genie_api.set_instrument(pv_prefix, import_instrument_init)


def prefix_pv_name(name: str) -> str:
    """``name`` after the instrument's prefix (no prefix until ``set_instrument``)."""
    return _genie_api.prefix_pv_name(name)


@log_command_and_handle_exception
def get_pv(
    name: str, to_string: bool = False, is_local: bool = False, use_numpy: bool = False
) -> Any:
    """The PV's value: enums, strings and char waveforms as text; ``is_local`` adds the
    prefix (unless the name has it already)."""
    return _genie_api.get_pv_value(name, to_string, is_local=is_local, use_numpy=use_numpy)


@log_command_and_handle_exception
def set_pv(name: str, value: Any, wait: bool = False, is_local: bool = False) -> None:
    """Write ``value`` (an enum by its state's name, in any case; ``None`` writes nothing)."""
    _genie_api.set_pv_value(name, value, wait, is_local=is_local)


@log_command_and_handle_exception
def connected_pvs_in_list(pv_list: list[str], is_local: bool = False) -> list[str]:
    """The PVs of ``pv_list`` that connect."""
    return _genie_api.connected_pvs_in_list(pv_list, is_local)


# ---- blocks ------------------------------------------------------------------------


@log_command_and_handle_exception
def get_blocks() -> list[str]:
    """The configuration's block names (from the block server, once it has answered)."""
    return _genie_api.get_block_names()


@log_command_and_handle_exception
def get_block_units(block_name: str) -> str | None:
    """The block's engineering units (None for a text or enum block)."""
    return _genie_api.get_block_units(block_name)


@log_command_and_handle_exception
def cget(block: str) -> Any:
    """The block's connected, name, value, unit, runcontrol, lowlimit, highlimit and
    alarm (an OrderedDict). Prints a line when the block is in alarm."""
    ans = _genie_api.get_block_data(block)
    if ans["alarm"] != "NO_ALARM":
        _log_alarmed_block(block, ans["alarm"])
    return ans


def _log_alarmed_block(block: str, alarm: Any) -> None:
    print(f"Block {block} is in alarm: {alarm}", file=sys.stdout)


def _warn_if_block_alarm(block: str) -> None:
    minor, major, invalid = check_alarms(block)
    for kind, blocks in (("MINOR", minor), ("MAJOR", major), ("INVALID", invalid)):
        if blocks:
            _log_alarmed_block(blocks[0], kind)


@log_command_and_handle_exception
def cshow(block: str | None = None) -> None:
    """Print one block's state, or every block's."""
    for name in [block] if block is not None else _genie_api.get_block_names():
        details = _genie_api.get_block_data(name, True)
        if not details["connected"]:
            details["value"] = "*** disconnected ***"
        print(
            "{name} = {value} (runcontrol = {runcontrol}, lowlimit = {lowlimit}, "
            "highlimit = {highlimit}, alarm = {alarm})".format(**details)
        )


@log_command_and_handle_exception
def cset(
    *args: Any,
    runcontrol: bool | None = None,
    lowlimit: float | None = None,
    highlimit: float | None = None,
    wait: bool | None = None,
    verbose: bool | None = None,
    **kwargs: Any,
) -> None:
    """Set blocks: ``cset("T_SP", 300)``, ``cset(T_SP=300, B_SP=1)``, with run control
    (``runcontrol``, ``lowlimit``, ``highlimit``) or ``wait`` for one block. Writes the
    block's ``:SP`` where there is one."""
    if args:
        if len(args) > 2:
            raise Exception(
                "Too many arguments, please type: help(g.cset) for more information on the syntax"
            )
        blocks = [str(args[0])]
        values = [args[1]] if len(args) == 2 else [None]
    elif kwargs:
        blocks, values = (list(x) for x in zip(*kwargs.items(), strict=True))
    else:
        raise Exception(
            "Incorrect syntax, please type: help(g.cset) for more information on the syntax"
        )
    for block in blocks:
        if not _genie_api.block_exists(block):
            raise Exception(f'No block with the name "{block}" exists')
    if wait and runcontrol is not None:
        raise Exception("Cannot enable or disable runcontrol at the same time as setting a wait")
    if wait and values[0] is None:
        raise Exception("Cannot wait as no setpoint specified. Please type: help(g.cset) for help")
    check_lowlimit_against_highlimit(lowlimit, highlimit)
    if len(blocks) > 1 and any(x is not None for x in (runcontrol, lowlimit, highlimit, wait)):
        raise Exception("Runcontrol and wait can only be changed for one block at a time")
    for block, value in zip(blocks, values, strict=True):
        _genie_api.set_block_value(block, value, runcontrol, lowlimit, highlimit, wait)
        _warn_if_block_alarm(block)
    if verbose is not False and (verbose or ToggleSettings.cset_verbose):
        for block, value in zip(blocks, values, strict=True):
            waitfor_block(block=block, value=value, maxwait=5)
            print("Result: ", end="")
            cshow(block)


@log_command_and_handle_exception
def check_alarms(*blocks: str) -> tuple[list[str], list[str], list[str]]:
    """The blocks in MINOR, MAJOR and INVALID alarm, as three lists."""
    return _genie_api.check_alarms(blocks)


@log_command_and_handle_exception
def check_limit_violations(*blocks: str) -> list[str]:
    """The blocks with soft limit violations (``.LVIO``)."""
    return _genie_api.check_limit_violations(list(blocks))


# ---- waiting -----------------------------------------------------------------------


@log_command_and_handle_exception
def waitfor(
    block: str | None = None,
    value: Any = None,
    lowlimit: float | None = None,
    highlimit: float | None = None,
    maxwait: float | None = None,
    wait_all: bool = False,
    seconds: float | None = None,
    minutes: float | None = None,
    hours: float | None = None,
    time: str | None = None,
    frames: int | None = None,
    raw_frames: int | None = None,
    uamps: float | None = None,
    mevents: float | None = None,
    early_exit: Callable[[], bool] = lambda: False,
    quiet: bool = False,
    **pars: Any,
) -> None:
    """Wait for a block (``waitfor(T1=6)``), a time, DAE counts; any one of them, or all
    with ``wait_all``; at most ``maxwait`` seconds."""
    if block is None:
        names = _genie_api.get_block_names()
        for key in pars:
            if key not in names:
                raise ValueError(f"Block named '{key}' did not exist.")
            if block is not None:
                raise Exception("Can set waitfor for only one block at a time")
            block, value = key, pars[key]
    controller = _waitfor_ready("waitfor")
    check_lowlimit_against_highlimit(lowlimit, highlimit)
    controller.start_waiting(
        block, value, lowlimit, highlimit, maxwait, wait_all, seconds, minutes, hours, time,
        frames, raw_frames, uamps, mevents, early_exit, quiet,
    )  # fmt: skip


@log_command_and_handle_exception
def waitfor_block(
    block: str,
    value: Any = None,
    lowlimit: float | None = None,
    highlimit: float | None = None,
    maxwait: float | None = None,
    early_exit: Callable[[], bool] = lambda: False,
    quiet: bool = False,
) -> None:
    """Wait until the block reads ``value``, or lies within the limits."""
    controller = _waitfor_ready("waitfor_block")
    check_lowlimit_against_highlimit(lowlimit, highlimit)
    controller.start_waiting(
        block=block, value=value, lowlimit=lowlimit, highlimit=highlimit, maxwait=maxwait,
        early_exit=early_exit, quiet=quiet,
    )  # fmt: skip


@log_command_and_handle_exception
def waitfor_time(
    seconds: float | None = None,
    minutes: float | None = None,
    hours: float | None = None,
    time: str | None = None,
    quiet: bool = False,
) -> None:
    """Wait for a time: ``seconds``, ``minutes``, ``hours``, or ``time="HH:MM:SS"``."""
    if all(t is None for t in (seconds, minutes, hours, time)):
        raise TypeError(
            "Cannot execute waitfor_time - need to set at least one parameter. "
            "Type help(waitfor_time) to see guidelines"
        )
    if any(t is not None and t < 0 for t in (seconds, minutes, hours)):
        raise ValueError("Cannot execute waitfor_time - Time parameters cannot be negative")
    controller = _waitfor_ready("waitfor_time", TypeError)
    controller.start_waiting(seconds=seconds, minutes=minutes, hours=hours, time=time, quiet=quiet)


def _count_wait(name: str, label: str, amount: Any, quiet: bool) -> None:
    if amount is None:
        raise TypeError(
            f"Cannot execute waitfor_{name} - need to set {label} parameter. "
            f"Type help(waitfor_{name}" + (")" if name == "mevents" else "")
        )
    if amount < 0:
        raise ValueError(f"Cannot execute waitfor_{name} - {label} parameter cannot be negative")
    _waitfor_ready(f"waitfor_{name}").start_waiting(**{name: amount, "quiet": quiet})


@log_command_and_handle_exception
def waitfor_frames(frames: int | None = None, quiet: bool = False) -> None:
    """Wait until the run has this many good frames."""
    _count_wait("frames", "frames", frames, quiet)


@log_command_and_handle_exception
def waitfor_raw_frames(raw_frames: int | None = None, quiet: bool = False) -> None:
    """Wait until the run has this many raw frames."""
    _count_wait("raw_frames", "raw_frames", raw_frames, quiet)


@log_command_and_handle_exception
def waitfor_mevents(mevents: float | None = None, quiet: bool = False) -> None:
    """Wait until the run has this many million events."""
    _count_wait("mevents", "mevents", mevents, quiet)


@log_command_and_handle_exception
def waitfor_uamps(uamps: float, quiet: bool = False) -> None:
    """Wait until the run has this much good charge (µAh)."""
    _waitfor_ready("waitfor_uamps").start_waiting(uamps=uamps, quiet=quiet)


@log_command_and_handle_exception
def waitfor_runstate(
    state: str, maxwaitsecs: int = 3600, onexit: bool = False, quiet: bool = False
) -> None:
    """Wait for a run state (``"SETUP"``, ``"RUNNING"``…), or with ``onexit`` to leave it."""
    _waitfor_ready("waitfor_runstate").wait_for_runstate(state, maxwaitsecs, onexit, quiet)


@log_command_and_handle_exception
def waitfor_move(*blocks: str, **kwargs: Any) -> None:
    """Wait for all motion to stop, or for the given blocks' motors."""
    start_timeout = kwargs.get("start_timeout", 2)
    move_timeout = kwargs.get("move_timeout")
    if _genie_api.wait_for_move is None:
        raise Exception("Cannot execute waitfor_move - try calling set_instrument first")
    if blocks:
        present = []
        for block in blocks:
            if _genie_api.block_exists(block):
                present.append(block)
            else:
                print(f"Block {block} does not exist, so ignoring it")
        _genie_api.wait_for_move.wait_specific(present, start_timeout, move_timeout)
    else:
        _genie_api.wait_for_move.wait(start_timeout, move_timeout)


# ---- the run ---------------------------------------------------------------------------


@log_command_and_handle_exception
def get_runstate() -> str:
    """The DAE's run state, e.g. ``"SETUP"``, ``"RUNNING"``."""
    return _dae().get_run_state()


@log_command_and_handle_exception
def get_runnumber() -> str:
    """The current run number, as the DAE serves it (a string, e.g. ``"00012345"``)."""
    return _dae().get_run_number()


@log_command_and_handle_exception
def get_rb() -> str:
    """The current RB (experiment) number."""
    return _dae().get_rb_number()


@log_command_and_handle_exception
def get_title() -> str:
    """The run's title."""
    return _dae().get_title()


@log_command_and_handle_exception
def get_users() -> str:
    """The run's users, "A, B and C"."""
    return _dae().get_users()


@log_command_and_handle_exception
def get_period() -> int:
    """The current period."""
    return _dae().get_period()


@log_command_and_handle_exception
def get_number_periods() -> int:
    """How many periods the run has."""
    return _dae().get_num_periods()


@log_command_and_handle_exception
def get_frames(period: bool = False) -> int:
    """Good frames of the run (or of the current period)."""
    return _dae().get_good_frames(period)


@log_command_and_handle_exception
def get_raw_frames(period: bool = False) -> int:
    """Raw frames of the run (or of the current period)."""
    return _dae().get_raw_frames(period)


@log_command_and_handle_exception
def get_uamps(period: bool = False) -> float:
    """Good charge of the run in µAh (or of the current period)."""
    return _dae().get_uamps(period)


@log_command_and_handle_exception
def get_time_since_begin(get_timedelta: bool = False) -> Any:
    """Seconds (or a timedelta) since the run began; raises unless a run is on."""
    return _dae().get_time_since_begin(get_timedelta)


@log_command_and_handle_exception
def get_events() -> int:
    """Events of the run."""
    return _dae().get_events()


@log_command_and_handle_exception
def get_mevents() -> float:
    """Millions of events of the run."""
    return _dae().get_mevents()


@log_command_and_handle_exception
def get_totalcounts() -> int:
    """Total counts of the run."""
    return _dae().get_total_counts()


@log_command_and_handle_exception
def get_script_dir() -> str:
    """The user script directory (empty: IBEX's ``C:/scripts/`` does not exist here)."""
    return get_user_script_dir()
