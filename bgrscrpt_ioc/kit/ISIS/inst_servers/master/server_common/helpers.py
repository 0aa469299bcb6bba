"""IBEX's ``server_common.helpers`` as background scripts use it, for bgrscrpt_ioc.

``register_ioc_start`` tells bgrscrpt_ioc over the notify channel that the script
is up, instead of writing to the IBEX IOC database; ``get_macro_values`` reads
``$MACROS`` as IBEX does.
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
    """The IOC macros: the JSON object in ``$MACROS`` as a dict (empty when unset)."""
    text = os.environ.get("MACROS", "").strip()
    if not text:
        return {}
    macros = json.loads(text)
    if not isinstance(macros, dict):
        raise ValueError("MACROS is not a JSON object")
    return dict(macros)


def _warn(text):
    with contextlib.suppress(Exception):  # even a closed stderr must not raise
        print(text, file=sys.stderr)
