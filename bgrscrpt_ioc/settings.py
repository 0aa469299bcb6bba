"""The TOML settings file: load, validate, and say exactly what is wrong.

A broken file must never half-apply, so everything is checked before anything
is used, and every error names the file, the line and the key.
"""

from __future__ import annotations

import datetime
import json
import math
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgrscrpt_ioc.ca.names import name_problem
from bgrscrpt_ioc.core.endpoint import host_problem, ip_problem, network_problem, parse_endpoint
from bgrscrpt_ioc.core.slot import AUTORESTART_LABELS, AutoRestart, Policy
from bgrscrpt_ioc.core.watch import NAMES_LIMIT, SEVERITY_NAMES, Level, WatchPolicy

WATCHDOG_MIN = 1.0
WATCHDOG_MAX = 86400.0
"""A watchdog period is 0 (off) or within these, in seconds (also for a WATCHDOG put)."""


class SettingsError(Exception):
    """A one-line, human-readable problem with the settings file."""


class _Bad(ValueError):
    """A value a key cannot take; the text completes "<file>:<line>: <key>: "."""


# ---- what each key may hold ------------------------------------------------------------
# Every key has a checker: it returns the value as the IOC uses it, or raises _Bad
# with what the key must be. Anything a checker accepts runs.


@dataclass(frozen=True)
class Number:
    """An integer or a float within [low, high]; ``zero``: 0 is allowed too (off, or at once)."""

    kind: type
    low: float
    high: float
    zero: bool = False
    unit: str = ""

    def __call__(self, value: Any) -> int | float:
        is_number = isinstance(value, int) if self.kind is int else isinstance(value, int | float)
        if isinstance(value, bool) or not is_number:
            raise _Bad(f"must be {'an integer' if self.kind is int else 'a number'}")
        if self.zero and value == 0:
            return self.kind(0)
        if not (math.isfinite(value) and self.low <= value <= self.high):
            unit = f" {self.unit}" if self.unit else ""
            either = "0 or " if self.zero else ""
            raise _Bad(f"must be {either}between {self.low:g} and {self.high:g}{unit}")
        return self.kind(value)


def _autorestart(value: Any) -> AutoRestart:
    if value not in AUTORESTART_LABELS:
        raise _Bad(f"must be one of {list(AUTORESTART_LABELS)}")
    return AutoRestart(AUTORESTART_LABELS.index(value))


SCRIPT_PATH_MAX = 1023
"""Bytes of a script's absolute path: SCRIPT shows it whole (a 1024-byte waveform)."""
MACROS_JSON_MAX = 65536
"""Bytes of a slot's macros as JSON: the script gets them in one environment variable."""


def _text(value: Any, what: str) -> str:
    """A non-empty string with no control characters (they would garble MSG and the log)."""
    if not isinstance(value, str) or not value:
        raise _Bad(f"must be {what}")
    bad = next((c for c in value if ord(c) < 32 or 127 <= ord(c) < 160), None)
    if bad is not None:
        raise _Bad(f"must be {what}, without control characters (found {bad!r})")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise _Bad(f"must be {what} (found a lone surrogate)")
    return value


def _script(value: Any) -> str:
    return _text(value, "a file name or path")


def _macros(value: Any) -> dict[str, str | int | float | bool]:
    """What ``get_macro_values()`` can hand a script: names to strings, numbers or booleans."""
    if not isinstance(value, dict):
        raise _Bad("must be a table of macro names and values")
    for name, item in value.items():
        try:
            _text(name, "a macro name")
        except _Bad as exc:
            raise _Bad(f"{name!r}: {exc}") from None
        if isinstance(item, str):
            if "\x00" in item or any(0xD800 <= ord(c) <= 0xDFFF for c in item):
                raise _Bad(f"{name}: a macro value must not hold NUL or a lone surrogate")
        elif isinstance(item, float) and not math.isfinite(item):
            raise _Bad(f"{name}: must be a finite number, not {item}")
        elif not isinstance(item, int | float | bool):
            raise _Bad(
                f"{name}: must be a string, a number or true/false, not "
                f"{_toml_type(item)} (quote it to pass it as text)"
            )
    if len(json.dumps(value)) > MACROS_JSON_MAX:
        raise _Bad(f"too large: the macros are at most {MACROS_JSON_MAX} bytes as JSON")
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
        raise _Bad("must be a list of strings")
    for host in value:
        name = host.strip()
        if ip_problem(name) and host_problem(name) and network_problem(name):
            raise _Bad(
                f"{host!r} is neither a host name (RFC 1123), an IP address nor a network"
                " (10.1.2.0/24)"
            )
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad("must be true or false")
    return value


def _users(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise _Bad("must be a list of strings")
    for user in value:
        _text(user.strip(), "a list of user names")
    return value


# [supervisor], usable again in [slots.BGRSCRPT_NN]. A new numeric key is one line here
# (and a field of Policy or SlotSettings).
_SUPERVISOR: dict[str, Callable[[Any], Any]] = {
    "startsecs": Number(float, 0.0, 3600.0, unit="s"),
    "stop_timeout": Number(float, 0.1, 3600.0, zero=True, unit="s"),
    "backoff_initial": Number(float, 0.1, 3600.0, zero=True, unit="s"),
    "backoff_max": Number(float, 0.1, 86400.0, zero=True, unit="s"),
    "start_limit_burst": Number(int, 1, 1000),
    "start_limit_interval": Number(float, 1.0, 86400.0, zero=True, unit="s"),
    "watchdog": Number(float, WATCHDOG_MIN, WATCHDOG_MAX, zero=True, unit="s"),
    "log_max_bytes": Number(int, 1024, 1 << 40),
    "log_backups": Number(int, 0, 1000),
    "memory_max": Number(float, 1.0, 1048576.0, zero=True, unit="MB"),  # 0 = no limit
    "autorestart": _autorestart,
}
_SLOT: dict[str, Callable[[Any], Any]] = {**_SUPERVISOR, "script": _script, "macros": _macros}
_ACCESS: dict[str, Callable[[Any], Any]] = {
    "write_hosts": _hosts,
    "write_users": _users,
    "require_address": _flag,
}
_IOC: dict[str, Callable[[Any], Any]] = {
    "loop_lag_high": Number(float, 1.0, 600000.0, zero=True, unit="ms"),
    "loop_lag_hihi": Number(float, 1.0, 600000.0, zero=True, unit="ms"),
}
_TOP_KEYS = {"supervisor", "slots", "access", "watch", "ioc"}

# One [[watch]]: numbers here, the rest checked in _Validator.watch
_WATCH_NUMBERS: dict[str, Number] = {
    "delay": Number(float, 0.1, 86400.0, zero=True, unit="s"),
    "verify_timeout": Number(float, 1.0, 86400.0, unit="s"),
    "max_restarts": Number(int, 1, 1000),
    "window": Number(float, 1.0, 30 * 86400.0, unit="s"),
    "backoff": Number(float, 0.1, 86400.0, zero=True, unit="s"),
    "backoff_max": Number(float, 0.1, 7 * 86400.0, zero=True, unit="s"),
}
_WATCH_KEYS = set(_WATCH_NUMBERS) | {
    "name", "pvs", "severity", "disconnected", "values", "restart", "via", "procserv", "peer",
}  # fmt: skip
_VIAS = ("procserv", "pv", "peer")
# A remote watch's PV prefix, <P>BGRSCRPT:WATCH:<name>: (via = "peer")
_PEER_PREFIX = re.compile(r"[!#-&(-~]*BGRSCRPT:WATCH:[A-Za-z0-9_-]{1,40}:")
_PV_SAFE = re.compile(r"[A-Za-z0-9_-]{1,40}")
# Printable ASCII but space and quotes: what EPICS record and CA names are made of.
_PV_NAME = re.compile(r"[!#-&(-~]{1,200}")
DBR_STRING_MAX = 39
"""Characters of a DBR_STRING (40 bytes with its NUL): a longer `values` entry never matches."""


def slot_name(index: int) -> str:
    """1 -> 'BGRSCRPT_01'."""
    return f"BGRSCRPT_{index:02d}"


def default_script(index: int) -> str:
    """IBEX's names: background_script.py for _01, background_script2.py for _02, …"""
    return "background_script.py" if index == 1 else f"background_script{index}.py"


@dataclass(frozen=True)
class SlotSettings:
    """Everything one slot needs to know from the settings."""

    name: str
    script: Path
    policy: Policy = field(default_factory=Policy)
    autorestart: AutoRestart = AutoRestart.ON_FAILURE
    watchdog: float = 0.0
    macros: dict[str, Any] | None = None
    log_max_bytes: int = 10_000_000
    log_backups: int = 5


@dataclass(frozen=True)
class WatchSettings:
    """One ``[[watch]]`` entry: what to watch, what to restart and how."""

    name: str
    pvs: tuple[str, ...]
    restart: tuple[str, ...]
    policy: WatchPolicy = field(default_factory=WatchPolicy)
    values: tuple[str | int | float, ...] = ()
    via: str = "procserv"
    procserv: dict[str, str] = field(default_factory=dict)
    peer: dict[str, str] = field(default_factory=dict)  # IOC -> the remote watch's PV prefix


@dataclass(frozen=True)
class Settings:
    slots: tuple[SlotSettings, ...]
    write_hosts: list[str] | None = None
    write_users: list[str] | None = None
    source: Path | None = None
    watches: tuple[WatchSettings, ...] = ()
    loop_lag_high: float = 200.0  # ms: BGRSCRPT:LOOP_LAG MINOR at or above (0: off)
    loop_lag_hihi: float = 1000.0  # ms: MAJOR at or above (0: off)
    # [access]: write_hosts names match only the addresses they resolve to at start-up
    require_address: bool = False


def load_settings(path: Path | None, *, config_dir: Path, slot_count: int) -> Settings:
    """Read ``path`` (None: all defaults) and build the settings of ``slot_count`` slots."""
    data: dict[str, Any] = {}
    text = ""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingsError(f"{path}: cannot read settings: {exc}") from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            line = re.search(r"at line (\d+)", str(exc))
            where = f"{path}:{line.group(1)}" if line else f"{path}"
            raise SettingsError(f"{where}: not valid TOML: {exc}") from None
    return _Validator(path, text).settings(data, config_dir, slot_count)


class _Validator:
    def __init__(self, path: Path | None, text: str):
        self.path = path
        self.lines = text.splitlines()

    def fail(self, table: str, key: str, problem: str) -> SettingsError:
        line = self._line_of(table, key)
        where = f"{self.path}:{line}" if line else f"{self.path}"
        dotted = f"{table}.{key}" if table else key
        return SettingsError(f"{where}: {dotted}: {problem}")

    def _line_of(self, table: str, key: str) -> int:
        """Best effort: the line of ``key`` inside ``[table]`` (tomllib keeps no positions)."""
        header = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]")
        key_re = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        dotted = f"{table}.{key}" if table else key
        # Fallback: the key in a dotted key (supervisor.startsecs = …) or an
        # inline table (BGRSCRPT_01 = { startsecs = … }) under an enclosing table.
        loose_re = re.compile(rf"(?:^|[\s{{,.])[\"']?{re.escape(key)}[\"']?\s*=")
        loose = 0
        current = ""
        for number, line in enumerate(self.lines, 1):
            match = header.match(line)
            if match:
                current = match.group(1).replace('"', "").replace("'", "")
                if current == dotted:  # the key is a table of its own: [table.key]
                    return number
            elif current == table and key_re.match(line):
                return number
            elif (
                not loose
                and (not current or f"{table}.".startswith(f"{current}."))
                and loose_re.search(line.split("#", 1)[0])
            ):
                loose = number
        return loose

    def settings(self, data: dict[str, Any], config_dir: Path, slot_count: int) -> Settings:
        for key in data:
            if key not in _TOP_KEYS:
                raise self.fail("", key, f"unknown key (expected one of {sorted(_TOP_KEYS)})")
        supervisor = self.table(data, "", "supervisor")
        defaults = self.checked("supervisor", supervisor, _SUPERVISOR)
        slots_table = self.table(data, "", "slots")
        names = [slot_name(i) for i in range(1, slot_count + 1)]
        for name in slots_table:
            if name not in names:
                raise self.fail("slots", name, f"no such slot (this IOC has {', '.join(names)})")
        slots = []
        for index, name in enumerate(names, 1):
            own = self.table(slots_table, "slots", name)
            values = {**defaults, **self.checked(f"slots.{name}", own, _SLOT)}
            slots.append(self.slot(name, index, values, config_dir, own=set(own)))
        access = self.checked("access", self.table(data, "", "access"), _ACCESS)
        if access.get("require_address") and access.get("write_hosts") is None:
            raise self.fail("access", "require_address", "needs write_hosts to check against")
        ioc = self.checked("ioc", self.table(data, "", "ioc"), _IOC)
        high, hihi = ioc.get("loop_lag_high", 200.0), ioc.get("loop_lag_hihi", 1000.0)
        if high and hihi and hihi < high:
            raise self.fail("ioc", "loop_lag_hihi", "must not be less than loop_lag_high")
        watches = self.watches(data.get("watch", []))
        return Settings(
            tuple(slots),
            access.get("write_hosts"),
            access.get("write_users"),
            self.path,
            watches,
            loop_lag_high=high,
            loop_lag_hihi=hihi,
            require_address=access.get("require_address", False),
        )

    # ---- [[watch]] ------------------------------------------------------------------

    def watch_fail(self, index: int, label: str, key: str, problem: str) -> SettingsError:
        """Like ``fail``, for the ``index``-th ``[[watch]]`` (their headers all look alike)."""
        line = self._watch_line(index, key)
        where = f"{self.path}:{line}" if line else f"{self.path}"
        return SettingsError(f"{where}: {label}.{key}: {problem}")

    def _watch_line(self, index: int, key: str) -> int:
        header = re.compile(r"^\s*\[\[\s*watch\s*\]\]")
        other = re.compile(r"^\s*\[")
        key_re = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*=")
        seen, start = -1, 0
        for number, line in enumerate(self.lines, 1):
            if header.match(line):
                seen += 1
                if seen == index:
                    start = number
                elif seen > index:
                    break
            elif seen == index and other.match(line):
                break
            elif seen == index and key_re.match(line):
                return number
        return start or self._line_of("", "watch")

    def watches(self, entries: Any) -> tuple[WatchSettings, ...]:
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise self.fail("", "watch", "must be an array of tables: [[watch]]")
        out: list[WatchSettings] = []
        names: set[str] = set()
        for index, entry in enumerate(entries):
            watch = self.watch(index, entry)
            if watch.name in names:
                raise self.watch_fail(
                    index, f"watch.{watch.name}", "name", "two watches have this name"
                )
            names.add(watch.name)
            if sum(len(name) + 1 for name in names) - 1 > NAMES_LIMIT:
                raise self.watch_fail(
                    index, f"watch.{watch.name}", "name",
                    f"the watch names, space-separated, exceed the {NAMES_LIMIT} characters "
                    "of BGRSCRPT:WATCH:NAMES: too many watches for one IOC",
                )  # fmt: skip
            out.append(watch)
        return tuple(out)

    def watch(self, index: int, entry: dict[str, Any]) -> WatchSettings:
        label = f"watch[{index}]"
        name = entry.get("name")
        if not isinstance(name, str) or not _PV_SAFE.fullmatch(name):
            raise self.watch_fail(
                index, label, "name",
                "must be 1-40 letters, digits, '_' or '-' (it goes into PV names)",
            )  # fmt: skip
        label = f"watch.{name}"

        def fail(key: str, problem: str) -> SettingsError:
            return self.watch_fail(index, label, key, problem)

        for key in entry:
            if key not in _WATCH_KEYS:
                raise fail(key, f"unknown key (expected one of {sorted(_WATCH_KEYS)})")
        numbers: dict[str, Any] = {}
        for key, check in _WATCH_NUMBERS.items():
            if key in entry:
                try:
                    numbers[key] = check(entry[key])
                except _Bad as exc:
                    raise fail(key, str(exc)) from None
        pvs = entry.get("pvs")
        if (
            not isinstance(pvs, list)
            or not pvs
            or not all(isinstance(p, str) and _PV_NAME.fullmatch(p) for p in pvs)
        ):
            raise fail("pvs", "must be a non-empty list of PV names")
        for pv in pvs:
            problem = name_problem(pv)
            if problem is not None:
                raise fail("pvs", f"{pv}: {problem}")
        severity = entry.get("severity", "INVALID")
        if severity not in SEVERITY_NAMES:
            raise fail("severity", f"must be one of {list(SEVERITY_NAMES)}")
        disconnected = entry.get("disconnected", True)
        if not isinstance(disconnected, bool):
            raise fail("disconnected", "must be true or false")
        values = entry.get("values", [])
        if not isinstance(values, list) or not (
            all(isinstance(v, str) for v in values)
            or all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        ):
            raise fail("values", "must be a list of strings, or a list of numbers")
        for value in values:
            if isinstance(value, float) and not math.isfinite(value):
                raise fail("values", f"{value} can never match: use finite numbers")
            if isinstance(value, str) and (
                len(value.strip().encode("utf-8")) > DBR_STRING_MAX or "\x00" in value
            ):
                raise fail(
                    "values",
                    f"{value[:50]!r} can never match: a PV's value as text is at most "
                    f"{DBR_STRING_MAX} characters",
                )
        restart = entry.get("restart")
        if (
            not isinstance(restart, list)
            or not restart
            or not all(isinstance(r, str) and _PV_SAFE.fullmatch(r) for r in restart)
        ):
            raise fail("restart", "must be a non-empty list of IOC names")
        if len(set(restart)) != len(restart):
            raise fail("restart", "names an IOC twice")
        via = entry.get("via", "procserv")
        if via not in _VIAS:
            raise fail("via", 'must be "procserv", "pv" or "peer"')
        procserv = entry.get("procserv", {})
        if not isinstance(procserv, dict):
            raise fail("procserv", 'must be a table of IOC = "host:port" or "unix:/path"')
        for ioc, endpoint in procserv.items():
            if ioc not in restart:
                raise fail("procserv", f"{ioc} is not in restart")
            if not isinstance(endpoint, str):
                raise fail("procserv", f'{ioc} must be "host:port" or "unix:/path"')
            try:
                parse_endpoint(endpoint)
            except ValueError as exc:
                raise fail("procserv", f"{ioc}: {endpoint!r}: {exc}") from None
        if via == "procserv":
            missing = [ioc for ioc in restart if ioc not in procserv]
            if missing:
                raise fail("procserv", f"no procServ endpoint for {', '.join(missing)}")
        peer = self.peer(entry.get("peer", {}), restart, via, fail)
        policy = WatchPolicy(
            severity=int(Level[severity]),
            disconnected=disconnected,
            **numbers,
        )
        if policy.backoff_max < policy.backoff:
            raise fail("backoff_max", "must not be less than backoff")
        return WatchSettings(
            name=name,
            pvs=tuple(pvs),
            restart=tuple(restart),
            policy=policy,
            values=tuple(values),
            via=via,
            procserv=dict(procserv),
            peer=peer,
        )

    @staticmethod
    def peer(
        peer: Any, restart: list[str], via: str, fail: Callable[[str, str], SettingsError]
    ) -> dict[str, str]:
        """``peer = { IOC = "<P>BGRSCRPT:WATCH:<name>:" }``: the remote watch that restarts IOC."""
        shape = 'must be a table of IOC = "<its IOC\'s prefix>BGRSCRPT:WATCH:<watch name>:"'
        if not isinstance(peer, dict):
            raise fail("peer", shape)
        seen: dict[str, str] = {}
        for ioc, prefix in peer.items():
            if ioc not in restart:
                raise fail("peer", f"{ioc} is not in restart")
            if not isinstance(prefix, str) or not _PEER_PREFIX.fullmatch(prefix):
                raise fail(
                    "peer",
                    f"{ioc}: {prefix!r} is not a remote watch's PV prefix "
                    "(<its IOC's prefix>BGRSCRPT:WATCH:<watch name>:)",
                )
            problem = name_problem(f"{prefix}RESTART_CNT")
            if problem is not None:
                raise fail("peer", f"{ioc}: {prefix!r}: {problem}")
            if prefix in seen:
                raise fail(
                    "peer",
                    f"{seen[prefix]} and {ioc} name the same remote watch (it restarts all "
                    "of its IOCs): list one of them",
                )
            seen[prefix] = ioc
        if via == "peer":
            missing = [ioc for ioc in restart if ioc not in peer]
            if missing:
                raise fail("peer", f"no remote watch for {', '.join(missing)}")
        return dict(peer)

    def table(self, parent: dict[str, Any], where: str, key: str) -> dict[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(where, key, "must be a table")
        return value

    def checked(
        self, table: str, values: dict[str, Any], keys: dict[str, Callable[[Any], Any]]
    ) -> dict[str, Any]:
        """Each key of ``values`` known in ``keys`` and accepted by its checker, converted."""
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key not in keys:
                raise self.fail(table, key, f"unknown key (expected one of {sorted(keys)})")
            try:
                out[key] = keys[key](value)
            except _Bad as exc:
                raise self.fail(table, key, str(exc)) from None
        return out

    def slot(
        self, name: str, index: int, values: dict[str, Any], config_dir: Path, own: set[str]
    ) -> SlotSettings:
        """``values``: [supervisor] overlaid with the slot's own keys, which are ``own``."""
        policy_keys = set(Policy.__dataclass_fields__)
        policy = Policy(**{k: v for k, v in values.items() if k in policy_keys})
        if policy.backoff_max < policy.backoff_initial:
            # Name the key that made it so: the slot's own if it has one, else [supervisor]'s.
            pair = ("backoff_max", "backoff_initial")
            mine = [key for key in pair if key in own]
            table = f"slots.{name}" if mine else "supervisor"
            key = (mine or [k for k in pair if k in values] or ["backoff_max"])[0]
            other = pair[1] if key == pair[0] else pair[0]
            relation = "less than" if key == "backoff_max" else "more than"
            raise self.fail(table, key, f"must not be {relation} {other}")
        script = Path(values.get("script", default_script(index)))
        if not script.is_absolute():
            script = config_dir / script
        if len(str(script.absolute()).encode("utf-8", "surrogateescape")) > SCRIPT_PATH_MAX:
            problem = f"the script's path is longer than {SCRIPT_PATH_MAX} bytes"
            raise self.fail(f"slots.{name}", "script", problem)
        return SlotSettings(
            name=name,
            script=script.absolute(),
            policy=policy,
            autorestart=values.get("autorestart", AutoRestart.ON_FAILURE),
            watchdog=values.get("watchdog", 0.0),
            macros=values.get("macros"),
            log_max_bytes=values.get("log_max_bytes", 10_000_000),
            log_backups=values.get("log_backups", 5),
        )
