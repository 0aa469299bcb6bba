"""``genie.toggle``: whether genie commands raise, and cset's default verbosity."""

from __future__ import annotations

import genie_python.genie_api_setup as _setup
from genie_python.genie_api_setup import log_command_and_handle_exception


class ToggleSettings:
    cset_verbose = False


@log_command_and_handle_exception
def exceptions_raised(toggle_on: bool) -> None:
    """True: commands raise their exceptions; False (the default): they print and return None."""
    _setup._exceptions_raised = toggle_on
    print(f"Raise exceptions set to {_setup._exceptions_raised}.")


@log_command_and_handle_exception
def cset_verbose(verbose: bool) -> None:
    """Make every cset show the block's new state (as ``verbose=True``)."""
    ToggleSettings.cset_verbose = verbose
    print(f"Default cset verbosity set to {ToggleSettings.cset_verbose}.")
