"""A tiny reader for EPICS database files (``.db``/``.template``).

Enough of the grammar for this project's own templates, so tests can hold the IOC
to them: ``record(type, "name") { field(X, "v") info(a, "b") alias("n") }``,
``#`` comments, quoted or bare values, and ``$(M)``/``${M}`` macros with
``$(M=default)``. Not a general EPICS parser: no ``include``, no ``path``, no
nested macros.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_MACRO = re.compile(r"\$(?:\(([^()=]+)(?:=([^()]*))?\)|\{([^{}=]+)(?:=([^{}]*))?\})")
_TOKEN = re.compile(
    r"""
      (?P<space>\s+|\#[^\n]*)
    | (?P<string>"(?:[^"\\]|\\.)*")
    | (?P<punct>[(){},])
    | (?P<bare>(?:\$\([^)]*\)|\$\{[^}]*\}|[^\s(){},"\#])+)
    """,
    re.VERBOSE,
)


class DbSyntaxError(ValueError):
    """The file does not follow the subset of the .db grammar read here."""


@dataclass
class Record:
    """One ``record(type, "name")`` with its fields and info tags, in file order."""

    type: str
    name: str
    fields: dict[str, str] = field(default_factory=dict)
    infos: dict[str, str] = field(default_factory=dict)
    aliases: list[str] = field(default_factory=list)


def substitute(text: str, macros: dict[str, str]) -> str:
    """Expand ``$(M)``, ``${M}`` and ``$(M=default)``; an undefined macro is an error."""

    def expand(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2) if match.group(1) else match.group(4)
        if name in macros:
            return macros[name]
        if default is not None:
            return default
        raise DbSyntaxError(f"undefined macro $({name})")

    return _MACRO.sub(expand, text)


def _tokens(text: str) -> list[tuple[str, str, int]]:
    out: list[tuple[str, str, int]] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None:
            line = text.count("\n", 0, pos) + 1
            raise DbSyntaxError(f"line {line}: unexpected {text[pos]!r}")
        kind = match.lastgroup or ""
        if kind != "space":
            value = match.group()
            if kind == "string":
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            out.append((kind, value, text.count("\n", 0, pos) + 1))
        pos = match.end()
    return out


class _Reader:
    def __init__(self, tokens: list[tuple[str, str, int]]):
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, str, int] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expect: str | None = None) -> str:
        token = self.peek()
        if token is None:
            raise DbSyntaxError(f"unexpected end of file, expected {expect or 'more'}")
        kind, value, line = token
        if expect is not None and value != expect:
            raise DbSyntaxError(f"line {line}: expected {expect!r}, found {value!r}")
        if expect is None and kind == "punct":
            raise DbSyntaxError(f"line {line}: expected a word or string, found {value!r}")
        self.pos += 1
        return value

    def call(self) -> tuple[str, list[str]]:
        """``word(arg, arg…)``: the word and its arguments."""
        word = self.take()
        self.take("(")
        args = [self.take()]
        while self.peek() is not None and self.peek()[1] == ",":  # type: ignore[index]
            self.take(",")
            args.append(self.take())
        self.take(")")
        return word, args


def parse(text: str, macros: dict[str, str] | None = None) -> list[Record]:
    """Parse database text into records, macros substituted."""
    # Substitute token by token so a macro in a comment needs no definition.
    tokens = [(kind, substitute(value, macros or {}), line) for kind, value, line in _tokens(text)]
    reader = _Reader(tokens)
    records: list[Record] = []
    while reader.peek() is not None:
        word, args = reader.call()
        if word not in ("record", "grecord") or len(args) != 2:
            raise DbSyntaxError(f"expected record(type, name), found {word}({', '.join(args)})")
        record = Record(type=args[0], name=args[1])
        nxt = reader.peek()
        if nxt is not None and nxt[1] == "{":
            reader.take("{")
            while (nxt := reader.peek()) is not None and nxt[1] != "}":
                item, item_args = reader.call()
                if item == "field" and len(item_args) == 2:
                    record.fields[item_args[0]] = item_args[1]
                elif item == "info" and len(item_args) == 2:
                    record.infos[item_args[0]] = item_args[1]
                elif item == "alias" and len(item_args) == 1:
                    record.aliases.append(item_args[0])
                else:
                    raise DbSyntaxError(f"{record.name}: unexpected {item}({', '.join(item_args)})")
            reader.take("}")
        records.append(record)
    return records


def parse_file(path: str, macros: dict[str, str] | None = None) -> list[Record]:
    """Parse a database file into records, macros substituted."""
    with open(path, encoding="utf-8") as handle:
        return parse(handle.read(), macros)
