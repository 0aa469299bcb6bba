"""Starting the real IOC on a damaged var dir, and with settings at the edge of validity.

A corrupt state database is moved aside and the IOC starts (one warning line);
a var dir it cannot use is one line and exit status 2, never a traceback (under
procServ or systemd a traceback would be a crash loop). Settings that pass
validation run: the script gets its macros, WATCHDOG puts outside 0 or 1..86400 s
are refused in words.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from epics import dbr

from tests.integration.beat import Heartbeat
from tests.integration.conftest import FAST_SETTINGS, write_script
from tests.integration.faults import ioc_msg, small_tmpfs
from tests.integration.harness import wait_for
from tests.integration.test_bad_input import ECA_PUTFAIL, put_status
from tests.integration.test_cli import one_line_error, run_cli

S01 = "BGRSCRPT_01"


def test_a_corrupt_database_is_moved_aside_and_the_ioc_starts(make_ioc, tmp_path, prefix):
    var_dir = tmp_path / "var"
    var_dir.mkdir()
    (var_dir / "state.sqlite").write_bytes(b"SQLite format 3\0" + os.urandom(8000))
    ioc = make_ioc(FAST_SETTINGS, slots=1).start()
    with Heartbeat(prefix) as beat:
        kept = [p for p in var_dir.iterdir() if p.name.startswith("state.sqlite.corrupt-")]
        assert len(kept) == 1, list(var_dir.iterdir())
        warnings = [line for line in ioc.output().splitlines() if "is corrupt" in line]
        assert len(warnings) == 1 and kept[0].name in warnings[0], warnings
        text, severity = ioc_msg(ioc)
        assert "is corrupt" in text and kept[0].name in text and severity == "NO_ALARM", text
        ioc.put(f"{S01}:WATCHDOG", 3.0)  # and the fresh database works
        wait_for(lambda: (var_dir / "state.sqlite").stat().st_size > 0, 5, "a fresh file")
        beat.check()
    assert "Traceback" not in ioc.output()
    assert ioc.stop() == 0


def _state_is_a_directory(var_dir: Path) -> str:
    (var_dir / "state.sqlite").mkdir(parents=True)
    return "state.sqlite is not a file (a directory)"


def _logs_is_a_file(var_dir: Path) -> str:
    var_dir.mkdir(parents=True)
    (var_dir / "logs").write_text("not a directory")
    return "logs is not a directory (a file)"


def _var_dir_is_a_file(var_dir: Path) -> str:
    var_dir.parent.mkdir(parents=True, exist_ok=True)
    var_dir.write_text("not a directory")
    return "is not a directory (a file)"


def _a_log_file_is_a_directory(var_dir: Path) -> str:
    (var_dir / "logs" / "BGRSCRPT_01.log").mkdir(parents=True)
    return "BGRSCRPT_01: Is a directory"


UNUSABLE = [_state_is_a_directory, _logs_is_a_file, _var_dir_is_a_file, _a_log_file_is_a_directory]


@pytest.mark.parametrize("damage", UNUSABLE, ids=[f.__name__.strip("_") for f in UNUSABLE])
def test_an_unusable_var_dir_is_one_line_and_exit_2(tmp_path, config_dir, test_tag, damage):
    var_dir = tmp_path / "var"
    problem = damage(var_dir)
    args = ["--prefix", "TVAR:", "--config-dir", str(config_dir), "--var-dir", str(var_dir)]
    message = one_line_error(run_cli(args, cwd=tmp_path))
    assert problem in message, message


def test_a_read_only_var_dir_is_one_line_and_exit_2(tmp_path, config_dir, test_tag):
    with small_tmpfs(tmp_path / "ro") as where:
        (where / "var").mkdir()
        remount = ["mount", "-o", "remount,ro", str(where)]
        if subprocess.run(remount, capture_output=True).returncode != 0:
            pytest.skip("cannot remount the tmpfs read-only")
        var_dir = where / "var"
        args = ["--prefix", "TVAR:", "--config-dir", str(config_dir), "--var-dir", str(var_dir)]
        message = one_line_error(run_cli(args, cwd=tmp_path))
        assert f"var dir {var_dir} is not writable: Read-only file system" in message, message


MACRO_SCRIPT = """
import json, os, sys
sys.path.insert(0, os.path.join(os.environ["KIT_ROOT"], "ISIS", "inst_servers", "master"))
from server_common.helpers import get_macro_values
print("macros", json.dumps(get_macro_values(), sort_keys=True, ensure_ascii=True), flush=True)
import time
while True:
    time.sleep(0.2)
"""


def test_settings_at_the_edge_run(make_ioc, config_dir):
    """Unicode and spaces in the script's path, macros of every accepted type, watchdog 1 s."""
    write_script(config_dir, "my scrïpt ☃.py", MACRO_SCRIPT)
    settings = FAST_SETTINGS + (
        "\n[slots.BGRSCRPT_01]\n"
        'script = "my scrïpt ☃.py"\n'
        'macros = { DEVICE = "ZF01", TEXT = "é ☃", N = 3, X = 1.5, ON = true, '
        "BIG = 99999999999999999999 }\n"
    )
    ioc = make_ioc(settings, slots=1).start()
    ioc.wait_status("RUNNING")
    expected = (
        '"BIG": 99999999999999999999, "DEVICE": "ZF01", "N": 3, "ON": true, '
        '"TEXT": "\\u00e9 \\u2603", "X": 1.5'
    )
    wait_for(lambda: expected in (ioc.get(f"{S01}:LOG", as_string=True) or ""), 10, "macros")
    # pyepics shows a char waveform's bytes one character each: the UTF-8 of the path.
    script = ioc.get(f"{S01}:SCRIPT", as_string=True).encode("latin-1").decode("utf-8")
    assert script.endswith("my scrïpt ☃.py"), script
    # WATCHDOG over CA: 0 or 1..86400 s, as in the settings file.
    for bad in (0.5, 1e-300, -1.0):
        assert put_status(ioc.pv(f"{S01}:WATCHDOG"), bad, dbr.DOUBLE) == ECA_PUTFAIL, bad
        assert ioc.get(f"{S01}:WATCHDOG") == 0.0
    assert ioc.put(f"{S01}:WATCHDOG", 1.0) == 1
    assert ioc.get(f"{S01}:WATCHDOG") == 1.0
    assert "watchdog must be 0 (off) or 1 to 86400 s" in ioc.output()
    assert "Traceback" not in ioc.output()
    assert ioc.stop() == 0


REPORTED = [
    ("[slots.BGRSCRPT_01]\nmacros = { WHEN = 1979-05-27T07:32:00Z }\n", 2,
     "slots.BGRSCRPT_01.macros: WHEN: must be a string, a number or true/false, not a date-time"),
    ('[slots.BGRSCRPT_01]\nscript = "a\\u0000b.py"\n', 2,
     "slots.BGRSCRPT_01.script: must be a file name or path, without control characters"),
    ("[supervisor]\nwatchdog = 1e-300\n", 2,
     "supervisor.watchdog: must be 0 or between 1 and 86400 s"),
    ('[[watch]]\nname = "Z"\npvs = ["A"]\nrestart = ["X"]\n'
     'procserv = { X = "999.999.999.999:40001" }\n', 5,
     "watch.Z.procserv: X: '999.999.999.999:40001': 999.999.999.999 is not an IPv4 address"),
]  # fmt: skip


@pytest.mark.parametrize(("text", "line", "problem"), REPORTED)
def test_the_reported_settings_are_refused_in_one_line(
    tmp_path, config_dir, test_tag, text, line, problem
):
    """Each once passed validation and then crashed the IOC (or killed every run)."""
    settings = config_dir / "bgrscrpt.toml"
    settings.write_text(text)
    var_dir = tmp_path / "var"
    args = ["--prefix", "TBAD:", "--config-dir", str(config_dir), "--var-dir", str(var_dir)]
    message = one_line_error(run_cli(args, cwd=tmp_path))
    assert message.startswith(f"{settings}:{line}: {problem}"), message
    assert not var_dir.exists()
