"""The TOML settings file: load, validate, and say exactly what is wrong.

A broken file must never half-apply, so everything is checked before anything
is used, and every error names the file, the line and the key.

Each key is declared once, on the dataclass field it fills (its type, default
and what it allows: ``core.setting_keys``): the numbers of a slot on
``core.slot.Policy``, of a watch on ``core.watch.WatchPolicy``, the rest on the
dataclasses below. A new key is one field; docs/settings.md's table of keys is
written from the same declarations (tools/settings_reference.py).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bgrscrpt_ioc.ca.ioc_pvs import LOOP_LAG_HIGH, LOOP_LAG_HIHI
from bgrscrpt_ioc.core.setting_keys import (
    Bad,
    Choice,
    Flag,
    Key,
    Needs,
    NotBelow,
    Range,
    Refused,
    check_table,
    check_values,
    declared,
    fill,
    keys_of,
    relation_refusal,
    setting,
    with_defaults,
)
from bgrscrpt_ioc.core.slot import AUTORESTART_LABELS, WATCHDOG, AutoRestart, Policy
from bgrscrpt_ioc.core.watch import NAMES_LIMIT, WatchPolicy
from bgrscrpt_ioc.setting_values import (
    HOSTS,
    IOC_NAMES,
    MACROS,
    PEER,
    PROCSERV,
    PV_NAMES,
    SCRIPT,
    SCRIPT_PATH_MAX,
    TRIGGER_VALUES,
    USERS,
    WATCH_NAME,
    InRestart,
    NeededVia,
)


class SettingsError(Exception):
    """A one-line, human-readable problem with the settings file."""


# ---- what the settings fill -------------------------------------------------------------


def slot_name(index: int) -> str:
    """1 -> 'BGRSCRPT_01'."""
    return f"BGRSCRPT_{index:02d}"


def default_script(index: int) -> str:
    """IBEX's names: background_script.py for _01, background_script2.py for _02, …"""
    return "background_script.py" if index == 1 else f"background_script{index}.py"


@dataclass(frozen=True)
class SlotSettings:
    """Everything one slot needs to know from the settings.

    Its keys, and those of its ``policy``, may be in ``[supervisor]`` for every slot
    or in ``[slots.BGRSCRPT_NN]`` for one; those of table ``slots``, in the latter only.
    """

    name: str
    script: Path = field(
        metadata=declared(
            SCRIPT,
            None,
            table="slots",
            note="the script, relative to the config dir",
            shown='"background_script.py" (01), "background_scriptN.py" (slot N)',
        )
    )
    policy: Policy = field(default_factory=Policy)
    autorestart: AutoRestart = setting(
        AutoRestart.ON_FAILURE,
        Choice({label: AutoRestart(i) for i, label in enumerate(AUTORESTART_LABELS)}),
        note="when the script is restarted by itself",
    )
    watchdog: float = setting(
        0.0, WATCHDOG, note="kill a run that has not beaten for this long (also a WATCHDOG put)"
    )
    macros: dict[str, Any] | None = setting(
        None, MACROS, table="slots", note="what `get_macro_values()` returns to the script"
    )
    log_max_bytes: int = setting(
        10_000_000, Range(1024, 1 << 40), note="VAR/logs/BGRSCRPT_NN.log is rotated at this size"
    )
    log_backups: int = setting(5, Range(0, 1000), note="old log files kept")


@dataclass(frozen=True)
class WatchSettings:
    """One ``[[watch]]`` entry: what to watch, what to restart and how (its ``policy``)."""

    name: str = field(metadata=declared(WATCH_NAME, note="goes into PV names"))
    pvs: tuple[str, ...] = field(metadata=declared(PV_NAMES, note="the PVs watched"))
    restart: tuple[str, ...] = field(
        metadata=declared(IOC_NAMES, note="the IOCs restarted, in this order")
    )
    policy: WatchPolicy = field(default_factory=WatchPolicy)
    values: tuple[str | int | float, ...] = setting(
        (), TRIGGER_VALUES, note="a PV at one of these values triggers too"
    )
    # A new way to restart: a label here, and a per-IOC table like procserv's below.
    via: str = setting(
        "procserv",
        Choice({"procserv": "procserv", "pv": "pv", "peer": "peer"}, in_words=True),
        note='how to restart: procServ\'s control port; "pv": `caput $(P)CS:PS:<IOC>:RESTART 1`; '
        '"peer": through the watch of the bgrscrpt_ioc on the IOC\'s host (`peer`)',
    )
    procserv: dict[str, str] = field(
        default_factory=dict,
        metadata=declared(
            PROCSERV,
            {},
            relations=(InRestart(), NeededVia("procserv", "procServ endpoint")),
            note="where each IOC's procServ control port listens",
        ),
    )
    peer: dict[str, str] = field(
        default_factory=dict,
        metadata=declared(
            PEER,
            {},
            relations=(InRestart(), NeededVia("peer", "remote watch")),
            note="for each IOC, the watch on another bgrscrpt_ioc that restarts it",
        ),
    )


@dataclass(frozen=True)
class Settings:
    slots: tuple[SlotSettings, ...]
    write_hosts: list[str] | None = setting(
        None,
        HOSTS,
        table="access",
        note="who may write; everyone else reads only",
        shown="(none: any host)",
    )
    write_users: list[str] | None = setting(
        None, USERS, table="access", note="who may write, by user name", shown="(none: any user)"
    )
    source: Path | None = None
    watches: tuple[WatchSettings, ...] = ()
    loop_lag_high: float = setting(
        LOOP_LAG_HIGH,
        Range(1.0, 600000.0, zero="off", unit="ms"),
        table="ioc",
        note="BGRSCRPT:LOOP_LAG is MINOR at or above this",
    )
    loop_lag_hihi: float = setting(
        LOOP_LAG_HIHI,
        Range(1.0, 600000.0, zero="off", unit="ms"),
        table="ioc",
        relations=(NotBelow("loop_lag_high", unless_off=True),),
        note="MAJOR at or above this",
    )
    require_address: bool = setting(
        False,
        Flag(),
        table="access",
        relations=(Needs("write_hosts", "needs write_hosts to check against"),),
        note="host names count only by the addresses they resolve to at start-up",
    )


# Every table and its keys (tools/settings_reference.py writes docs/settings.md's from these).
SUPERVISOR_KEYS: dict[str, Key] = {**keys_of(Policy), **keys_of(SlotSettings)}
SLOT_KEYS: dict[str, Key] = {**SUPERVISOR_KEYS, **keys_of(SlotSettings, "slots")}
ACCESS_KEYS: dict[str, Key] = keys_of(Settings, "access")
IOC_KEYS: dict[str, Key] = keys_of(Settings, "ioc")
WATCH_KEYS: dict[str, Key] = {**keys_of(WatchSettings), **keys_of(WatchPolicy)}
_TOP_KEYS = {"supervisor", "slots", "access", "watch", "ioc"}


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
    return _Loader(path, text).settings(data, config_dir, slot_count)


def _escaped(text: str) -> str:
    """``text`` with control characters escaped (a key or an IOC name is the file's own
    text): the message stays one line and cannot drive the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


_HEADER = re.compile(r"^\s*\[\[?\s*([^\]]+?)\s*\]")


class _Lines:
    """Where a key is written, best effort: tomllib keeps no positions."""

    def __init__(self, text: str) -> None:
        self.lines = text.splitlines()

    def of(self, table: str, key: str, nth: int | None = None) -> int:
        """The line of ``key`` in ``[table]`` (``""``: at the top), or in the ``nth``
        ``[[table]]``. Else a ``[table.key]`` header; the key as a dotted key or in an
        inline table (in an enclosing table, or in the entry); the entry's header; 0."""
        exact = re.compile(rf"^\s*[\"']?{re.escape(key)}[\"']?\s*[=.]")  # key = or key.sub =
        loose_re = re.compile(rf"(?:^|[\s{{,.])[\"']?{re.escape(key)}[\"']?\s*=")
        dotted = f"{table}.{key}" if table else key
        current, entries, start, loose = "", -1, 0, 0
        inside = nth is None and not table  # in [table], or in the nth [[table]]
        for number, line in enumerate(self.lines, 1):
            match = _HEADER.match(line)
            if match:
                current = match.group(1).replace('"', "").replace("'", "")
                if nth is None:
                    if current == dotted:  # the key is a table of its own: [table.key]
                        return number
                    inside = current == table
                else:
                    if current == dotted and entries == nth:  # [table.key] in the entry
                        return number
                    entry = current == table and line.lstrip().startswith("[[")
                    entries += entry
                    inside = entry and entries == nth
                    start = start or (number if inside else 0)
                continue
            if inside and exact.match(line):
                return number
            # A dotted key (supervisor.startsecs = …) or an inline table
            # (BGRSCRPT_01 = { startsecs = … }) under an enclosing table.
            enclosing = (
                (not current or f"{table}.".startswith(f"{current}.")) if nth is None else inside
            )
            if not loose and enclosing and loose_re.search(line.split("#", 1)[0]):
                loose = number
        if nth is None:
            return loose
        return loose or start or self.of("", table)


class _Loader:
    def __init__(self, path: Path | None, text: str):
        self.path = path
        self.lines = _Lines(text)

    def fail(
        self,
        label: str,
        key: str,
        problem: str,
        *,
        table: str | None = None,
        nth: int | None = None,
    ) -> SettingsError:
        """``<file>:<line>: <label>.<key>: <problem>``; ``table`` and ``nth`` find the line
        when ``label`` is not the table's header (a ``[[watch]]`` entry)."""
        line = self.lines.of(label if table is None else table, key, nth)
        where = f"{self.path}:{line}" if line else f"{self.path}"
        dotted = f"{label}.{key}" if label else key
        return SettingsError(f"{where}: {_escaped(dotted)}: {_escaped(problem)}")

    def table(self, parent: dict[str, Any], where: str, key: str) -> dict[str, Any]:
        value = parent.get(key, {})
        if not isinstance(value, dict):
            raise self.fail(where, key, "must be a table")
        return value

    def given(self, table: str, values: dict[str, Any], keys: Mapping[str, Key]) -> dict[str, Any]:
        """The keys ``values`` sets, checked (no defaults, no relations yet)."""
        try:
            return check_values(values, keys)
        except Refused as exc:
            raise self.fail(table, exc.key, exc.problem) from None

    def whole(self, table: str, values: dict[str, Any], keys: Mapping[str, Key]) -> dict[str, Any]:
        """Every key of ``table``: checked, defaulted, related."""
        try:
            return check_table(values, keys)
        except Refused as exc:
            raise self.fail(table, exc.key, exc.problem) from None

    def settings(self, data: dict[str, Any], config_dir: Path, slot_count: int) -> Settings:
        for key in data:
            if key not in _TOP_KEYS:
                raise self.fail("", key, f"unknown key (expected one of {sorted(_TOP_KEYS)})")
        supervisor = self.given("supervisor", self.table(data, "", "supervisor"), SUPERVISOR_KEYS)
        slots_table = self.table(data, "", "slots")
        names = [slot_name(i) for i in range(1, slot_count + 1)]
        for name in slots_table:
            if name not in names:
                raise self.fail("slots", name, f"no such slot (this IOC has {', '.join(names)})")
        slots = []
        for index, name in enumerate(names, 1):
            own = self.given(f"slots.{name}", self.table(slots_table, "slots", name), SLOT_KEYS)
            slots.append(self.slot(name, index, supervisor, own, config_dir))
        access = self.whole("access", self.table(data, "", "access"), ACCESS_KEYS)
        ioc = self.whole("ioc", self.table(data, "", "ioc"), IOC_KEYS)
        watches = self.watches(data.get("watch", []))
        return fill(
            Settings, {**access, **ioc}, slots=tuple(slots), source=self.path, watches=watches
        )

    def slot(
        self,
        name: str,
        index: int,
        supervisor: dict[str, Any],
        own: dict[str, Any],
        config_dir: Path,
    ) -> SlotSettings:
        """The slot's own keys over ``[supervisor]``'s, over the defaults."""
        values = with_defaults({**supervisor, **own}, SLOT_KEYS)
        refused = relation_refusal(values, SLOT_KEYS, own)
        if refused is not None:
            # Name the key that made it so: the slot's own if it has one, else [supervisor]'s.
            table = f"slots.{name}"
            if refused.key not in own:
                table = "supervisor"
                refused = relation_refusal(values, SLOT_KEYS, supervisor) or refused
            raise self.fail(table, refused.key, refused.problem)
        script = Path(values["script"] or default_script(index))
        if not script.is_absolute():
            script = config_dir / script
        if len(str(script.absolute()).encode("utf-8", "surrogateescape")) > SCRIPT_PATH_MAX:
            problem = f"the script's path is longer than {SCRIPT_PATH_MAX} bytes"
            raise self.fail(f"slots.{name}", "script", problem)
        return fill(
            SlotSettings,
            values,
            name=name,
            script=script.absolute(),
            policy=fill(Policy, values),
        )

    # ---- [[watch]] ------------------------------------------------------------------

    def watches(self, entries: Any) -> tuple[WatchSettings, ...]:
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise self.fail("", "watch", "must be an array of tables: [[watch]]")
        out: list[WatchSettings] = []
        names: set[str] = set()
        shown = -1  # characters of NAMES so far: the names and a space between each two
        for index, entry in enumerate(entries):
            watch = self.watch(index, entry)
            problem = ""
            if watch.name in names:
                problem = "two watches have this name"
            elif shown + 1 + len(watch.name) > NAMES_LIMIT:
                problem = (
                    f"the watch names, space-separated, exceed the {NAMES_LIMIT} characters "
                    "of BGRSCRPT:WATCH:NAMES: too many watches for one IOC"
                )
            if problem:
                raise self.fail(f"watch.{watch.name}", "name", problem, table="watch", nth=index)
            names.add(watch.name)
            shown += 1 + len(watch.name)
            out.append(watch)
        return tuple(out)

    def watch(self, index: int, entry: dict[str, Any]) -> WatchSettings:
        # The name first: the other keys' errors say watch.<name>.
        try:
            name = WATCH_KEYS["name"].check(entry.get("name"))
        except Bad as exc:
            raise self.fail(f"watch[{index}]", "name", str(exc), table="watch", nth=index) from None
        try:
            values = check_table(entry, WATCH_KEYS)
        except Refused as exc:
            raise self.fail(
                f"watch.{name}", exc.key, exc.problem, table="watch", nth=index
            ) from None
        return fill(WatchSettings, values, policy=fill(WatchPolicy, values))
