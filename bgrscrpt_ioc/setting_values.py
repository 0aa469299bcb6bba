"""What a settings key holds when a range or a set of labels cannot say it: text,
macros, hosts and users, PV and IOC names, procServ endpoints.

Each check returns the value as the IOC uses it, or raises ``Bad`` with what the
key must be (the text completes "<file>:<line>: <key>: "). Anything a check
accepts runs. The relations at the end tie a watch's per-IOC tables (``procserv``)
to its ``restart`` and ``via``.
"""

from __future__ import annotations

import datetime
import json
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from bgrscrpt_ioc.ca.names import MAX_RECORD_CHARS, name_problem
from bgrscrpt_ioc.core.endpoint import host_problem, ip_problem, network_problem, parse_endpoint
from bgrscrpt_ioc.core.setting_keys import Bad, Checked, Refused

SCRIPT_PATH_MAX = 1023
"""Bytes of a script's absolute path: SCRIPT shows it whole (a 1024-byte waveform)."""
MACROS_JSON_MAX = 65536
"""Bytes of a slot's macros as JSON: the script gets them in one environment variable."""
DBR_STRING_MAX = 39
"""Characters of a DBR_STRING (40 bytes with its NUL): a longer `values` entry never matches."""
_PV_SAFE = re.compile(r"[A-Za-z0-9_-]{1,40}")
# Printable ASCII but space and quotes: what EPICS record and CA names are made of.
_PV_NAME = re.compile(r"[!#-&(-~]{1,200}")


def _text(value: Any, what: str) -> str:
    """A non-empty string with no control characters (they would garble MSG and the log)."""
    if not isinstance(value, str) or not value:
        raise Bad(f"must be {what}")
    bad = next((c for c in value if ord(c) < 32 or 127 <= ord(c) < 160), None)
    if bad is not None:
        raise Bad(f"must be {what}, without control characters (found {bad!r})")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise Bad(f"must be {what} (found a lone surrogate)")
    return value


def _script(value: Any) -> str:
    return _text(value, "a file name or path")


def _macros(value: Any) -> dict[str, str | int | float | bool]:
    """What ``get_macro_values()`` can hand a script: names to strings, numbers or booleans."""
    if not isinstance(value, dict):
        raise Bad("must be a table of macro names and values")
    for name, item in value.items():
        try:
            _text(name, "a macro name")
        except Bad as exc:
            raise Bad(f"{name!r}: {exc}") from None
        if isinstance(item, str):
            if "\x00" in item or any(0xD800 <= ord(c) <= 0xDFFF for c in item):
                raise Bad(f"{name}: a macro value must not hold NUL or a lone surrogate")
        elif isinstance(item, float) and not math.isfinite(item):
            raise Bad(f"{name}: must be a finite number, not {item}")
        elif not isinstance(item, int | float | bool):
            raise Bad(
                f"{name}: must be a string, a number or true/false, not "
                f"{_toml_type(item)} (quote it to pass it as text)"
            )
    if len(json.dumps(value)) > MACROS_JSON_MAX:
        raise Bad(f"too large: the macros are at most {MACROS_JSON_MAX} bytes as JSON")
    return dict(value)


def _toml_type(value: Any) -> str:
    if isinstance(value, datetime.datetime):
        return "a date-time"
    if isinstance(value, datetime.date):
        return "a date"
    if isinstance(value, datetime.time):
        return "a time"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _hosts(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Bad("must be a list of strings")
    for host in value:
        name = host.strip()
        if ip_problem(name) and host_problem(name) and network_problem(name):
            raise Bad(
                f"{host!r} is neither a host name (RFC 1123), an IP address nor a network"
                " (10.1.2.0/24)"
            )
    return value


def _users(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Bad("must be a list of strings")
    for user in value:
        _text(user.strip(), "a list of user names")
    return value


def _watch_name(value: Any) -> str:
    if not isinstance(value, str) or not _PV_SAFE.fullmatch(value):
        raise Bad("must be 1-40 letters, digits, '_' or '-' (it goes into PV names)")
    return value


def _pvs(value: Any) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(p, str) and _PV_NAME.fullmatch(p) for p in value)
    ):
        raise Bad("must be a non-empty list of PV names")
    for pv in value:
        problem = name_problem(pv)
        if problem is not None:
            raise Bad(f"{pv}: {problem}")
    return tuple(value)


def _values(value: Any) -> tuple[str | int | float, ...]:
    if not isinstance(value, list) or not (
        all(isinstance(v, str) for v in value)
        or all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)
    ):
        raise Bad("must be a list of strings, or a list of numbers")
    for item in value:
        if isinstance(item, float) and not math.isfinite(item):
            raise Bad(f"{item} can never match: use finite numbers")
        if isinstance(item, str) and (
            len(item.strip().encode("utf-8")) > DBR_STRING_MAX or "\x00" in item
        ):
            raise Bad(
                f"{item[:50]!r} can never match: a PV's value as text is at most "
                f"{DBR_STRING_MAX} characters"
            )
    return tuple(value)


def _restart(value: Any) -> tuple[str, ...]:
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(r, str) and _PV_SAFE.fullmatch(r) for r in value)
    ):
        raise Bad("must be a non-empty list of IOC names")
    if len(set(value)) != len(value):
        raise Bad("names an IOC twice")
    return tuple(value)


def _procserv(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise Bad('must be a table of IOC = "host:port" or "unix:/path"')
    for ioc, endpoint in value.items():
        if not isinstance(endpoint, str):
            raise Bad(f'{ioc} must be "host:port" or "unix:/path"')
        try:
            parse_endpoint(endpoint)
        except ValueError as exc:
            raise Bad(f"{ioc}: {endpoint!r}: {exc}") from None
    return dict(value)


# A remote watch's PV prefix, <P>BGRSCRPT:WATCH:<name>: (via = "peer")
_PEER_PREFIX = re.compile(r"[!#-&(-~]*BGRSCRPT:WATCH:[A-Za-z0-9_-]{1,40}:")


def _peer(value: Any) -> dict[str, str]:
    """``peer = { IOC = "<P>BGRSCRPT:WATCH:<name>:" }``: the remote watch that restarts IOC."""
    if not isinstance(value, dict):
        raise Bad('must be a table of IOC = "<its IOC\'s prefix>BGRSCRPT:WATCH:<watch name>:"')
    seen: dict[str, str] = {}
    for ioc, prefix in value.items():
        if not isinstance(prefix, str) or not _PEER_PREFIX.fullmatch(prefix):
            raise Bad(
                f"{ioc}: {prefix!r} is not a remote watch's PV prefix "
                "(<its IOC's prefix>BGRSCRPT:WATCH:<watch name>:)"
            )
        problem = name_problem(f"{prefix}RESTART_CNT")
        if problem is not None:
            raise Bad(f"{ioc}: {prefix!r}: {problem}")
        if prefix in seen:
            raise Bad(
                f"{seen[prefix]} and {ioc} name the same remote watch (it restarts all "
                "of its IOCs): list one of them"
            )
        seen[prefix] = ioc
    return dict(value)


# ---- as the settings declare them --------------------------------------------------------

SCRIPT = Checked(
    _script,
    "a file name or path without control characters, "
    f"at most {SCRIPT_PATH_MAX} bytes once absolute",
)
MACROS = Checked(
    _macros,
    "names without control characters; values strings (no NUL), finite numbers or "
    f"true/false, at most {MACROS_JSON_MAX // 1024} kB in all as JSON. A TOML date, time, "
    "array or table is refused: quote it to pass it as text",
)
HOSTS = Checked(_hosts, "host names (RFC 1123), IP addresses or networks (`10.1.2.0/24`)")
USERS = Checked(_users, "user names without control characters")
WATCH_NAME = Checked(_watch_name, "1-40 letters, digits, `_` or `-`")
PV_NAMES = Checked(
    _pvs,
    "PV names: printable ASCII without spaces or quotes, a record name (before any `.`) "
    f"of at most {MAX_RECORD_CHARS} characters",
)
IOC_NAMES = Checked(_restart, "IOC names (letters, digits, `_`, `-`), each once")
TRIGGER_VALUES = Checked(
    _values, f"all strings (at most {DBR_STRING_MAX} characters) or all finite numbers"
)
PROCSERV = Checked(_procserv, '`IOC = "host:port"` or `IOC = "unix:/absolute/path"`')
PEER = Checked(
    _peer,
    '`IOC = "<P>BGRSCRPT:WATCH:<name>:"`, the PV prefix of another IOC\'s watch; '
    "no two IOCs naming the same one",
)


# ---- relations of a watch's keys ------------------------------------------------------


@dataclass(frozen=True)
class InRestart:
    """Every IOC of a per-IOC table (``procserv``) is one the watch restarts."""

    def refusal(
        self, key: str, values: Mapping[str, Any], given: Collection[str]
    ) -> Refused | None:
        for ioc in values[key]:
            if ioc not in values["restart"]:
                return Refused(key, f"{ioc} is not in restart")
        return None

    def describe(self, key: str) -> str:
        return "each an IOC of `restart`"


@dataclass(frozen=True)
class NeededVia:
    """With ``via`` = this table's way, every IOC of ``restart`` has an entry, ``what``."""

    via: str
    what: str

    def refusal(
        self, key: str, values: Mapping[str, Any], given: Collection[str]
    ) -> Refused | None:
        if values["via"] != self.via:
            return None
        missing = [ioc for ioc in values["restart"] if ioc not in values[key]]
        if missing:
            return Refused(key, f"no {self.what} for {', '.join(missing)}")
        return None

    def describe(self, key: str) -> str:
        return f'one for every IOC of `restart` when `via = "{self.via}"`'
