"""Write the table of settings keys in docs/settings.md from the keys' declarations.

    .venv/bin/python tools/settings_reference.py            rewrite the table in place
    .venv/bin/python tools/settings_reference.py --check    exit 1 if it is out of date

The table sits between two HTML comments in docs/settings.md; everything else
in that file is written by hand. tests/unit/test_setting_keys.py fails when the
table and the declarations differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bgrscrpt_ioc.core.setting_keys import Key, keys_of
from bgrscrpt_ioc.settings import (
    ACCESS_KEYS,
    IOC_KEYS,
    SUPERVISOR_KEYS,
    WATCH_KEYS,
    SlotSettings,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "settings.md"
BEGIN = "<!-- keys: written by tools/settings_reference.py from the declarations -->"
END = "<!-- end of keys -->"

TABLES: list[tuple[str, dict[str, Key]]] = [
    ("`[supervisor]` (every slot) and `[slots.BGRSCRPT_NN]` (one slot)", SUPERVISOR_KEYS),
    ("`[slots.BGRSCRPT_NN]` only", keys_of(SlotSettings, "slots")),
    ("`[access]`", ACCESS_KEYS),
    ("`[ioc]`", IOC_KEYS),
    ("each `[[watch]]` ([recovery.md](recovery.md))", WATCH_KEYS),
]


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def allowed(key: Key) -> str:
    """What ``key`` allows, with how it relates to the other keys of its table."""
    parts = [key.allowed.describe(key.kind)]
    parts += [relation.describe(key.name) for relation in key.relations]
    return "; ".join(parts)


def reference() -> str:
    """The table, between its two markers."""
    out = [BEGIN]
    for title, keys in TABLES:
        out += [
            "",
            f"{title}:",
            "",
            "| key | default | allowed | what it does |",
            "|---|---|---|---|",
        ]
        for key in keys.values():
            default = _cell(key.default_text())
            out.append(f"| `{key.name}` | {default} | {_cell(allowed(key))} | {_cell(key.note)} |")
    out += ["", END]
    return "\n".join(out)


def rewritten(text: str) -> str:
    """``text`` (docs/settings.md) with its table of keys as the declarations have it."""
    start, end = text.index(BEGIN), text.index(END) + len(END)
    return text[:start] + reference() + text[end:]


def main(argv: list[str]) -> int:
    text = DOC.read_text(encoding="utf-8")
    new = rewritten(text)
    if "--check" in argv:
        if new != text:
            print(f"{DOC}: the table of keys is out of date: run {Path(__file__).name}")
            return 1
        return 0
    if new != text:
        DOC.write_text(new, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
