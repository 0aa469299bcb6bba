"""The TOML settings file: load, validate, and say exactly what is wrong.

A broken file must never half-apply, so everything is checked before anything
is used, and every error names the file, the line and the key.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgrscrpt_ioc.core.slot import AUTORESTART_LABELS, AutoRestart, Policy
from bgrscrpt_ioc.core.watch import NAMES_LIMIT, SEVERITY_NAMES, Level, WatchPolicy


class SettingsError(Exception):
    """A one-line, human-readable problem with the settings file."""


# Keys of [supervisor], usable again in [slots.BGRSCRPT_NN]: (type, minimum, maximum)
_NUMBERS: dict[str, tuple[type, float, float]] = {
    "startsecs": (float, 0.0, 3600.0),
    "stop_timeout": (float, 0.0, 3600.0),
    "backoff_initial": (float, 0.0, 3600.0),
    "backoff_max": (float, 0.0, 86400.0),
    "start_limit_burst": (int, 1, 1000),
    "start_limit_interval": (float, 0.0, 86400.0),
    "watchdog": (float, 0.0, 86400.0),
    "log_max_bytes": (int, 1024, 1 << 40),
    "log_backups": (int, 0, 1000),
    "memory_max": (float, 0.0, 1048576.0),  # MB; 0 = no limit
}
_SUPERVISOR_KEYS = set(_NUMBERS) | {"autorestart"}
_SLOT_KEYS = _SUPERVISOR_KEYS | {"script", "macros"}
_ACCESS_KEYS = {"write_hosts", "write_users"}
_TOP_KEYS = {"supervisor", "slots", "access", "watch"}

# Keys of one [[watch]] (SPEC.md): numbers as (type, minimum, maximum)
_WATCH_NUMBERS: dict[str, tuple[type, float, float]] = {
    "delay": (float, 0.0, 86400.0),
    "verify_timeout": (float, 0.1, 86400.0),
    "max_restarts": (int, 1, 1000),
    "window": (float, 1.0, 30 * 86400.0),
    "backoff": (float, 0.0, 86400.0),
    "backoff_max": (float, 0.0, 7 * 86400.0),
}
_WATCH_KEYS = set(_WATCH_NUMBERS) | {
    "name", "pvs", "severity", "disconnected", "values", "restart", "via", "procserv",
}  # fmt: skip
_PV_SAFE = re.compile(r"[A-Za-z0-9_-]{1,40}")
_PV_NAME = re.compile(r"[^\s\"']{1,200}")
_ENDPOINT = re.compile(r"(?:unix:/\S+|[A-Za-z0-9_.-]+:[0-9]{1,5})")


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


@dataclass(frozen=True)
class Settings:
    slots: tuple[SlotSettings, ...]
    write_hosts: list[str] | None = None
    write_users: list[str] | None = None
    source: Path | None = None
    watches: tuple[WatchSettings, ...] = ()


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
        defaults = self.slot_values("supervisor", supervisor, _SUPERVISOR_KEYS)
        slots_table = self.table(data, "", "slots")
        names = [slot_name(i) for i in range(1, slot_count + 1)]
        for name in slots_table:
            if name not in names:
                raise self.fail("slots", name, f"no such slot (this IOC has {', '.join(names)})")
        slots = []
        for index, name in enumerate(names, 1):
            own = self.table(slots_table, "slots", name)
            values = {**defaults, **self.slot_values(f"slots.{name}", own, _SLOT_KEYS)}
            slots.append(self.slot(name, index, values, config_dir))
        access = self.table(data, "", "access")
        hosts = users = None
        for key, value in access.items():
            if key not in _ACCESS_KEYS:
                raise self.fail("access", key, f"unknown key (expected {sorted(_ACCESS_KEYS)})")
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise self.fail("access", key, "must be a list of strings")
        hosts = access.get("write_hosts")
        users = access.get("write_users")
        watches = self.watches(data.get("watch", []))
        return Settings(tuple(slots), hosts, users, self.path, watches)

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
        for key, (kind, low, high) in _WATCH_NUMBERS.items():
            if key not in entry:
                continue
            value = entry[key]
            ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
            if isinstance(value, bool) or not ok_type:
                raise fail(key, f"must be {'an integer' if kind is int else 'a number'}")
            if not (math.isfinite(value) and low <= value <= high):
                raise fail(key, f"must be between {low:g} and {high:g}")
            numbers[key] = kind(value)
        pvs = entry.get("pvs")
        if (
            not isinstance(pvs, list)
            or not pvs
            or not all(isinstance(p, str) and _PV_NAME.fullmatch(p) for p in pvs)
        ):
            raise fail("pvs", "must be a non-empty list of PV names")
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
        if via not in ("procserv", "pv"):
            raise fail("via", 'must be "procserv" or "pv"')
        procserv = entry.get("procserv", {})
        if not isinstance(procserv, dict):
            raise fail("procserv", 'must be a table of IOC = "host:port" or "unix:/path"')
        for ioc, endpoint in procserv.items():
            if ioc not in restart:
                raise fail("procserv", f"{ioc} is not in restart")
            if not isinstance(endpoint, str) or not _ENDPOINT.fullmatch(endpoint):
                raise fail("procserv", f'{ioc} must be "host:port" or "unix:/path"')
            if not endpoint.startswith("unix:") and not 0 < int(endpoint.rsplit(":", 1)[1]) < 65536:
                raise fail("procserv", f"{ioc}: {endpoint.rsplit(':', 1)[1]} is not a port")
        if via == "procserv":
            missing = [ioc for ioc in restart if ioc not in procserv]
            if missing:
                raise fail("procserv", f"no procServ endpoint for {', '.join(missing)}")
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
        )

    def table(self, parent: dict[str, Any], where: str, key: str) -> dict[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(where, key, "must be a table")
        return value

    def slot_values(self, table: str, values: dict[str, Any], allowed: set[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in values.items():
            if key not in allowed:
                raise self.fail(table, key, f"unknown key (expected one of {sorted(allowed)})")
            if key in _NUMBERS:
                kind, low, high = _NUMBERS[key]
                ok_type = isinstance(value, int) if kind is int else isinstance(value, int | float)
                if isinstance(value, bool) or not ok_type:
                    raise self.fail(
                        table, key, f"must be {'an integer' if kind is int else 'a number'}"
                    )
                if not (math.isfinite(value) and low <= value <= high):
                    raise self.fail(table, key, f"must be between {low:g} and {high:g}")
                out[key] = kind(value)
            elif key == "autorestart":
                if value not in AUTORESTART_LABELS:
                    raise self.fail(table, key, f"must be one of {list(AUTORESTART_LABELS)}")
                out[key] = AutoRestart(AUTORESTART_LABELS.index(value))
            elif key == "script":
                if not isinstance(value, str) or not value:
                    raise self.fail(table, key, "must be a file name or path")
                out[key] = value
            elif key == "macros":
                if not isinstance(value, dict):
                    raise self.fail(table, key, "must be a table of macro names and values")
                out[key] = value
        return out

    def slot(self, name: str, index: int, values: dict[str, Any], config_dir: Path) -> SlotSettings:
        policy_keys = set(Policy.__dataclass_fields__)
        policy = Policy(**{k: v for k, v in values.items() if k in policy_keys})
        if policy.backoff_max < policy.backoff_initial:
            table = f"slots.{name}" if "backoff_max" not in values else "supervisor"
            raise self.fail(table, "backoff_max", "must not be less than backoff_initial")
        script = Path(values.get("script", default_script(index)))
        if not script.is_absolute():
            script = config_dir / script
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
