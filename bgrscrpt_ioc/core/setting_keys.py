"""Settings keys, declared on the dataclass field each one fills.

A key's type is the field's annotation, its default the field's default, and
what it allows (a range, a set of labels, a checker) sits beside them in the
field's metadata::

    @dataclass(frozen=True)
    class Policy:
        startsecs: float = setting(1.0, Range(0.0, 3600.0, unit="s"))

:func:`keys_of` reads those declarations back; :func:`check_table` is the one
check every settings table goes through. Pure code: no files and no TOML (the
settings loader reads the file and says on which line a refused key is).
"""

from __future__ import annotations

import copy
import functools
import math
import typing
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

_METADATA = "setting"


class Bad(ValueError):
    """A value a key cannot take; the text completes "<file>:<line>: <key>: "."""


class Refused(ValueError):
    """``key`` cannot be as the settings have it: ``problem`` says why, in words."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""The default of a key that must be given."""


# ---- what a key allows -------------------------------------------------------------------


class Allowed(Protocol):
    """What one key may hold."""

    def check(self, value: Any, kind: type) -> Any:
        """``value`` as the IOC uses it; raises :class:`Bad` with what it must be.
        ``kind`` is the annotation of the field the key fills."""

    def describe(self, kind: type) -> str:
        """What is allowed, in words, for the settings reference."""

    def show(self, value: Any) -> str:
        """A value as it is written in the settings file (for a default)."""


def toml_text(value: Any) -> str:
    """``value`` as TOML writes it: ``1.0``, ``"On failure"``, ``true``, ``[]``, ``{}``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list | tuple):
        return f"[{', '.join(toml_text(item) for item in value)}]"
    if isinstance(value, dict):
        inner = ", ".join(f"{key} = {toml_text(item)}" for key, item in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    if value is None:
        return "(none)"
    return repr(value)


def _figure(number: float) -> str:
    """A limit for people: 3600, 0.1, 1099511627776."""
    return str(int(number)) if float(number).is_integer() else repr(float(number))


@dataclass(frozen=True)
class Range:
    """A number within [low, high], an integer if the field is ``int``.

    ``zero``: 0 is allowed too; a string says what 0 means ("off", "no limit").
    The check refuses booleans, NaN and the infinities.
    """

    low: float
    high: float
    zero: bool | str = False
    unit: str = ""

    def check(self, value: Any, kind: type) -> Any:
        whole = kind is int
        is_number = isinstance(value, int) if whole else isinstance(value, int | float)
        if isinstance(value, bool) or not is_number:
            raise Bad(f"must be {'an integer' if whole else 'a number'}")
        if self.zero and value == 0:
            return kind(0)
        # The bounds first: they compare with any int exactly, where isfinite() would
        # overflow on one beyond a float (TOML integers can be that long).
        if not (self.low <= value <= self.high and math.isfinite(value)):
            unit = f" {self.unit}" if self.unit else ""
            either = "0 or " if self.zero else ""
            raise Bad(f"must be {either}between {self.low:g} and {self.high:g}{unit}")
        return kind(value)

    def describe(self, kind: type) -> str:
        unit = f" {self.unit}" if self.unit else ""
        span = f"{_figure(self.low)} to {_figure(self.high)}{unit}"
        if kind is int:
            span = f"an integer, {span}"
        if not self.zero:
            return span
        meaning = f" ({self.zero})" if isinstance(self.zero, str) else ""
        return f"0{meaning}, or {span}"

    def show(self, value: Any) -> str:
        return toml_text(value)


@dataclass(frozen=True)
class Choice:
    """One of some labels; the IOC takes the value each label maps to.

    The refusal lists the labels: ``must be one of ['Off', 'Always']`` or, with
    ``in_words``, ``must be "procserv" or "pv"``.
    """

    options: Mapping[str, Any]
    in_words: bool = False

    def check(self, value: Any, kind: type) -> Any:
        if not isinstance(value, str) or value not in self.options:
            raise Bad(f"must be {self._labels()}")
        return self.options[value]

    def _labels(self) -> str:
        if not self.in_words:
            return f"one of {list(self.options)}"
        quoted = [f'"{label}"' for label in self.options]
        return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)

    def describe(self, kind: type) -> str:
        return ", ".join(f'"{label}"' for label in self.options)

    def show(self, value: Any) -> str:
        for label, mapped in self.options.items():
            if mapped == value:
                return f'"{label}"'
        return toml_text(value)


@dataclass(frozen=True)
class Flag:
    """true or false."""

    def check(self, value: Any, kind: type) -> Any:
        if not isinstance(value, bool):
            raise Bad("must be true or false")
        return value

    def describe(self, kind: type) -> str:
        return "true or false"

    def show(self, value: Any) -> str:
        return toml_text(value)


@dataclass(frozen=True)
class Checked:
    """Whatever ``check`` accepts (it returns the value as used, or raises :class:`Bad`);
    ``allowed`` says what that is, for the settings reference."""

    check_value: Callable[[Any], Any]
    allowed: str

    def check(self, value: Any, kind: type) -> Any:
        return self.check_value(value)

    def describe(self, kind: type) -> str:
        return self.allowed

    def show(self, value: Any) -> str:
        return toml_text(value)


# ---- how keys relate ---------------------------------------------------------------------


class Relation(Protocol):
    """A condition between a key and others of its table, checked once all have values."""

    def refusal(
        self, key: str, values: Mapping[str, Any], given: Collection[str]
    ) -> Refused | None:
        """None when ``values`` satisfy it; else the refusal, naming a key of ``given``
        (the keys the file sets) when one of them made it so."""

    def describe(self, key: str) -> str:
        """The condition in words, for the settings reference."""


@dataclass(frozen=True)
class NotBelow:
    """The key must not be less than ``low`` (with ``unless_off``: unless either is 0, off)."""

    low: str
    unless_off: bool = False

    def refusal(
        self, key: str, values: Mapping[str, Any], given: Collection[str]
    ) -> Refused | None:
        high, low = values[key], values[self.low]
        if (self.unless_off and not (high and low)) or high >= low:
            return None
        # Name the key the file sets, the upper one first.
        if key in given or self.low not in given:
            return Refused(key, f"must not be less than {self.low}")
        return Refused(self.low, f"must not be more than {key}")

    def describe(self, key: str) -> str:
        return f"not less than `{self.low}`" + (" (unless either is 0)" if self.unless_off else "")


@dataclass(frozen=True)
class Needs:
    """When the key is set (true, non-empty), ``other`` must be given too."""

    other: str
    problem: str

    def refusal(
        self, key: str, values: Mapping[str, Any], given: Collection[str]
    ) -> Refused | None:
        if values[key] and values[self.other] is None:
            return Refused(key, self.problem)
        return None

    def describe(self, key: str) -> str:
        return f"needs `{self.other}`"


# ---- the declaration -------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    """One settings key: what it allows, its default (or :data:`REQUIRED`), the table it
    is written in (``""``: the table its dataclass is read from), how it relates to the
    other keys of that table, and a few words on what it does."""

    allowed: Allowed
    default: Any = REQUIRED
    table: str = ""
    relations: tuple[Relation, ...] = ()
    note: str = ""
    shown: str = ""
    """The default in words when the value cannot say it (a default that depends on the slot)."""
    name: str = ""
    kind: type = object
    """The field's annotation: ``int`` makes a :class:`Range` take integers only."""

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def check(self, value: Any) -> Any:
        """``value`` as the IOC uses it; raises :class:`Bad`."""
        return self.allowed.check(value, self.kind)

    def default_value(self) -> Any:
        """A fresh copy of the default: a table or list default is never shared."""
        return copy.deepcopy(self.default)

    def default_text(self) -> str:
        if self.shown:
            return self.shown
        return "(required)" if self.required else self.allowed.show(self.default)


def declared(
    allowed: Allowed,
    default: Any = REQUIRED,
    *,
    table: str = "",
    relations: tuple[Relation, ...] = (),
    note: str = "",
    shown: str = "",
) -> dict[str, Key]:
    """The metadata of a field filled by the settings key of the same name, for a field
    that sets its own dataclass default (``field(default_factory=dict, metadata=…)``) or
    has none (a required key, or one whose default the loader works out)."""
    key = Key(allowed, default, table, relations, note, shown)
    return {_METADATA: key}


def setting(
    default: T,
    allowed: Allowed,
    *,
    table: str = "",
    relations: tuple[Relation, ...] = (),
    note: str = "",
    shown: str = "",
) -> T:
    """A dataclass field filled by the settings key of the same name; ``default`` is both
    the field's default and the key's. Immutable defaults only (see :func:`declared`)."""
    if isinstance(default, list | dict | set):
        raise TypeError("a mutable default needs field(default_factory=…, metadata=declared(…))")
    metadata = declared(allowed, default, table=table, relations=relations, note=note, shown=shown)
    return field(default=default, metadata=metadata)


@functools.cache
def _keys(cls: type) -> tuple[Key, ...]:
    hints = typing.get_type_hints(cls)
    out = []
    for item in fields(cls):
        key = item.metadata.get(_METADATA)
        if key is not None:
            kind = hints[item.name]
            out.append(
                replace(key, name=item.name, kind=kind if isinstance(kind, type) else object)
            )
    return tuple(out)


def keys_of(cls: type, table: str | None = "") -> dict[str, Key]:
    """The declared keys of dataclass ``cls``, in field order: those of ``table`` (``""``:
    the class's own table; None: every table)."""
    return {key.name: key for key in _keys(cls) if table is None or key.table == table}


def fill(cls: type[T], values: Mapping[str, Any], **others: Any) -> T:
    """An instance of ``cls`` from the checked ``values`` of its keys (every table), and
    ``others`` for its other fields."""
    own = {name: values[name] for name in keys_of(cls, None) if name in values}
    return cls(**{**own, **others})


# ---- the one check ---------------------------------------------------------------------


def check_values(given: Mapping[str, Any], keys: Mapping[str, Key]) -> dict[str, Any]:
    """Each key of ``given``, in the file's order, known and accepted: its value as the
    IOC uses it. Raises :class:`Refused` for the first that is not."""
    out: dict[str, Any] = {}
    for name, value in given.items():
        key = keys.get(name)
        if key is None:
            raise Refused(name, f"unknown key (expected one of {sorted(keys)})")
        try:
            out[name] = key.check(value)
        except Bad as exc:
            raise Refused(name, str(exc)) from None
    return out


def with_defaults(values: Mapping[str, Any], keys: Mapping[str, Key]) -> dict[str, Any]:
    """``values`` and the default of every key they lack. A required key that is missing is
    refused with its check's own words for an absent value (``None``)."""
    out = dict(values)
    for name, key in keys.items():
        if name in out:
            continue
        if key.required:
            try:
                key.check(None)
            except Bad as exc:
                raise Refused(name, str(exc)) from None
            raise Refused(name, "must be given")  # a check that takes None: still required
        out[name] = key.default_value()
    return out


def relation_refusal(
    values: Mapping[str, Any], keys: Mapping[str, Key], given: Collection[str]
) -> Refused | None:
    """The first relation, in key order, that ``values`` (every key's) break; None if none."""
    for name, key in keys.items():
        for relation in key.relations:
            refused = relation.refusal(name, values, given)
            if refused is not None:
                return refused
    return None


def check_table(given: Mapping[str, Any], keys: Mapping[str, Key]) -> dict[str, Any]:
    """The one check of a settings table: every key of ``given`` known and accepted, the
    defaults of the others, then the relations. Returns every key's value; raises
    :class:`Refused` naming the key."""
    values = with_defaults(check_values(given, keys), keys)
    refused = relation_refusal(values, keys, given)
    if refused is not None:
        raise refused
    return values
