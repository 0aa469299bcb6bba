"""The operator screens name only PVs the IOC serves, and every one of them.

Both formats are parsed as the display tools read them (every ``pv_name`` of a
widget, a write action or a rule; BOY's rule ``pv``), their macros filled in as
an operator's display would, and compared with ``--list-pvs`` of the real IOC
started with three slots and a ``[[watch]]`` (and with none: the watches' NAMES
and DRYRUN are on the screens all the same).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from bgrscrpt_ioc.screens.__main__ import screens

ROOT = Path(__file__).resolve().parents[2]
SCREENS = ROOT / "screens"
PREFIX = "IN:TESTINST:"
WATCH = "ZF_MAG-1"

WATCH_SETTINGS = """
[[watch]]
name = "{name}"
pvs = ["IN:TESTINST:ZFCNTRL_01:FIELD"]
restart = ["ZFCNTRL_01"]
via = "pv"
"""


def list_pvs(config_dir: Path, slots: int) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-m", "bgrscrpt_ioc", "--list-pvs", "--prefix", PREFIX,
         "--slots", str(slots), "--config-dir", str(config_dir)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return set(result.stdout.split())


def references(path: Path) -> list[str]:
    """Every PV a display file names, as written (with its macros)."""
    root = ET.parse(path).getroot()
    if path.suffix == ".bob":
        assert root.tag == "display" and root.get("version") == "2.0.0"
        names = [e.text for e in root.iter("pv_name")]
    else:
        assert root.get("typeId") == "org.csstudio.opibuilder.Display"
        names = [e.text for e in root.iter("pv_name")]
        names += [e.text for rule in root.iter("rule") for e in rule.iter("pv")]
    assert all(names), f"{path.name}: an empty PV name"
    return [name.strip() for name in names if name is not None]


def expand(name: str, macros: dict[str, str]) -> str:
    def value(match: re.Match) -> str:
        assert match.group(1) in macros, f"{name}: macro {match.group(1)} is never set"
        return macros[match.group(1)]

    return re.sub(r"\$\((\w+)\)", value, name)


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> set[str]:
    config_dir = tmp_path_factory.mktemp("config")
    (config_dir / "bgrscrpt.toml").write_text(WATCH_SETTINGS.format(name=WATCH))
    return list_pvs(config_dir, slots=3)


@pytest.mark.parametrize("suffix", [".bob", ".opi"])
def test_every_pv_of_the_committed_screens_is_served(served: set[str], suffix: str):
    main = {expand(n, {"P": PREFIX}) for n in references(SCREENS / f"bgrscrpt{suffix}")}
    watch = {
        expand(n, {"P": PREFIX, "W": WATCH})
        for n in references(SCREENS / f"bgrscrpt_watch{suffix}")
    }
    assert main - served == set()
    assert watch - served == set()
    # ...and together they show everything the IOC serves.
    assert served - main - watch == set()
    # The IOC-wide watch PVs, served with or without watches, on both; the
    # PVs of one watch only on the watch screen.
    ioc_wide = {f"{PREFIX}BGRSCRPT:WATCH:DRYRUN", f"{PREFIX}BGRSCRPT:WATCH:NAMES"}
    assert ioc_wide <= watch
    assert {n for n in main if ":WATCH:" in n} == ioc_wide


def test_the_committed_screens_are_what_the_generator_writes():
    for name, text in screens(3, None).items():
        committed = (SCREENS / name).read_text(encoding="utf-8")
        assert committed == text, f"screens/{name} is stale: run python -m bgrscrpt_ioc.screens"


def test_screens_for_a_settings_file(tmp_path: Path):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    settings = WATCH_SETTINGS.format(name="FLAKY") + WATCH_SETTINGS.format(name="ZFMAGFLD")
    (config_dir / "bgrscrpt.toml").write_text(settings)
    result = subprocess.run(
        [sys.executable, "-m", "bgrscrpt_ioc.screens", "--slots", "2",
         "--config", str(config_dir / "bgrscrpt.toml"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
        env={**os.environ},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    served = list_pvs(config_dir, slots=2)
    for suffix in (".bob", ".opi"):
        names = {
            expand(n, {"P": PREFIX}) for n in references(tmp_path / "out" / f"bgrscrpt{suffix}")
        }
        assert names == served
    assert not (tmp_path / "out" / "bgrscrpt_watch.bob").exists()


def test_screens_without_watches_still_show_names_and_dryrun(tmp_path: Path):
    config_dir = tmp_path / "config"
    config_dir.mkdir()
    (config_dir / "bgrscrpt.toml").write_text("")
    served = list_pvs(config_dir, slots=1)
    assert {n for n in served if ":WATCH:" in n} == {
        f"{PREFIX}BGRSCRPT:WATCH:DRYRUN",
        f"{PREFIX}BGRSCRPT:WATCH:NAMES",
    }
    for name, text in screens(1, []).items():
        path = tmp_path / name
        path.write_text(text, encoding="utf-8")
        assert {expand(n, {"P": PREFIX}) for n in references(path)} == served, name


def test_status_widgets_carry_alarm_colours():
    root = ET.parse(SCREENS / "bgrscrpt.bob").getroot()
    status = [w for w in root.iter("widget") if (w.findtext("pv_name") or "").endswith(":STATUS")]
    assert len(status) == 3
    for widget in status:
        assert widget.findtext("border_alarm_sensitive") == "true"
        rule = widget.find("rules/rule")
        assert rule is not None and rule.get("prop_id") == "background_color"
        # FATAL (index 6) is red, RUNNING (2) green.
        colours = {e.get("bool_exp"): e.find("value/color").attrib for e in rule.iter("exp")}
        assert colours["pv0==6"]["red"] == "255" and colours["pv0==2"]["green"] == "210"
    buttons = {a.findtext("pv_name") for a in root.iter("action") if a.get("type") == "write_pv"}
    for slot in ("BGRSCRPT_01", "BGRSCRPT_02", "BGRSCRPT_03"):
        for command in ("START", "STOP", "RESTART"):
            assert f"$(P){slot}:{command}" in buttons


def test_a_bad_settings_file_is_one_line(tmp_path: Path):
    bad = tmp_path / "bgrscrpt.toml"
    bad.write_text("[[watch]]\nname = 'x y'\n")
    result = subprocess.run(
        [sys.executable, "-m", "bgrscrpt_ioc.screens",
         "--config", str(bad), "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and "name" in result.stderr


def test_html_picture_shows_states_and_alarms():
    from bgrscrpt_ioc.screens.html import write_html
    from bgrscrpt_ioc.screens.layout import build_screen

    screen = build_screen(["BGRSCRPT_01"], [], prefix="X:")
    page = write_html(screen, {"X:BGRSCRPT_01:STATUS": ("FATAL", 2, 6)})
    status = next(line for line in page.splitlines() if ">FATAL<" in line)
    assert "background:rgb(255,70,70)" in status and "border:2px solid #ff0000" in status
    # Every other PV had no value: drawn as disconnected, named.
    assert "X:BGRSCRPT_01:PID</div>" in page and "dashed #ff00ff" in page
