"""``python -m bgrscrpt_ioc.screens``: write the operator screens.

Without options it writes the screens kept in the repository: ``bgrscrpt.bob``
and ``bgrscrpt.opi`` (slots 01-03, IBEX's three) and ``bgrscrpt_watch.bob`` and
``bgrscrpt_watch.opi`` (one watch, macro ``W``). With ``--config`` it writes one
screen for that instrument: every slot and every ``[[watch]]`` of the settings.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .bob import write_bob
from .layout import build_screen
from .opi import write_opi

DEFAULT_SLOTS = 3
WATCH_MACRO = "$(W)"


def slot_names(count: int) -> list[str]:
    return [f"BGRSCRPT_{i:02d}" for i in range(1, count + 1)]


def screens(slots: int, watches: list[str] | None) -> dict[str, str]:
    """File name -> contents. ``watches`` None: the generic pair with a W-macro watch screen."""
    out: dict[str, str] = {}
    main = build_screen(slot_names(slots), watches or [])
    out["bgrscrpt.bob"] = write_bob(main)
    out["bgrscrpt.opi"] = write_opi(main)
    if watches is None:
        watch = build_screen([], [WATCH_MACRO], title="Alarm-recovery watch")
        out["bgrscrpt_watch.bob"] = write_bob(watch)
        out["bgrscrpt_watch.opi"] = write_opi(watch)
    return out


def watch_names(config: Path, slots: int) -> list[str]:
    from bgrscrpt_ioc.settings import load_settings

    settings = load_settings(config, config_dir=config.parent.absolute(), slot_count=slots)
    return [watch.name for watch in settings.watches]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bgrscrpt_ioc.screens", description=__doc__)
    p.add_argument("--slots", type=int, default=None, help="number of slots (default 3)")
    p.add_argument("--config", type=Path, help="settings file: one screen with its watches")
    p.add_argument("--out", type=Path, default=Path("screens"), help="directory (default screens/)")
    args = p.parse_args(argv)
    slots = args.slots or DEFAULT_SLOTS
    if not 1 <= slots <= 99:
        p.error("--slots must be between 1 and 99")
    watches = None
    if args.config is not None:
        from bgrscrpt_ioc.settings import SettingsError

        try:
            watches = watch_names(args.config, slots)
        except SettingsError as exc:
            print(f"{p.prog}: error: {exc}", file=sys.stderr)
            return 2
    args.out.mkdir(parents=True, exist_ok=True)
    for name, text in screens(slots, watches).items():
        (args.out / name).write_text(text, encoding="utf-8")
        print(args.out / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
