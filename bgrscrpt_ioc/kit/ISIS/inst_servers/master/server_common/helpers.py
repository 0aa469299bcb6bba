"""IBEX's ``server_common.helpers`` as background scripts use it, for bgrscrpt_ioc.

- ``register_ioc_start(ioc_name)``: tells bgrscrpt_ioc over the notify channel
  that the script is up (IBEX writes to its IOC database); never raises.
- ``get_macro_values()``: the IOC's macros from ``$MACROS`` (JSON), printed as
  IBEX prints them.
- ``MACROS``, ``CONTROL_SYSTEM_PREFIX``, ``PVPREFIX_MACRO``, ``BLOCK_PREFIX``: as in
  IBEX, from the script's environment.
- ``motor_in_set_mode``: genie_python's, loaded when first used (IBEX's module
  imports genie_python as it loads).
"""

import contextlib
import json
import os
import sys


def register_ioc_start(ioc_name, pv_database=None, prefix=None):
    """Register the start of an IOC (here: the script). Never raises, as in IBEX.

    Args:
        ioc_name: name of the IOC, e.g. "BGRSCRPT_01"
        pv_database: accepted for compatibility, unused
        prefix: accepted for compatibility, unused
    """
    try:
        from bgrscrpt_ioc import script

        if not script.notify(READY=1, IOC_NAME=ioc_name):
            reason = "no NOTIFY_SOCKET" if not os.environ.get("NOTIFY_SOCKET") else "send failed"
            _warn(f"register_ioc_start({ioc_name}): not registered ({reason})")
    except Exception as exc:  # a script must never fail to start because of this
        _warn(f"register_ioc_start({ioc_name}): {exc.__class__.__name__}: {exc}")


def get_macro_values():
    """The IOC macros: the JSON object in ``$MACROS`` as a dict (empty when unset).

    Prints "Defined macros: {...}", as IBEX's does.
    """
    text = os.environ.get("MACROS", "").strip()
    macros = json.loads(text) if text else {}
    if not isinstance(macros, dict):
        raise ValueError("MACROS is not a JSON object")
    macros = dict(macros)
    print("Defined macros: " + str(macros))
    return macros


def _get_env_var(name):
    return os.environ.get(name, "")


MACROS = {
    "$(MYPVPREFIX)": _get_env_var("MYPVPREFIX"),
    "$(EPICS_KIT_ROOT)": _get_env_var("EPICS_KIT_ROOT"),
    "$(ICPCONFIGROOT)": _get_env_var("ICPCONFIGROOT"),
    "$(ICPVARDIR)": _get_env_var("ICPVARDIR"),
}
CONTROL_SYSTEM_PREFIX = MACROS["$(MYPVPREFIX)"] + "CS:"
PVPREFIX_MACRO = "$(MYPVPREFIX)"
BLOCK_PREFIX = "CS:SB:"


def __getattr__(name):
    # IBEX's module takes motor_in_set_mode from genie_python as it loads; here only
    # when a script asks for it, so that importing the helpers stays cheap.
    if name == "motor_in_set_mode":
        from genie_python import genie as g

        return g.adv.motor_in_set_mode
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _warn(text):
    with contextlib.suppress(Exception):  # even a closed stderr must not raise
        print(text, file=sys.stderr)
