"""The autosave file in IBEX's format: writing, reading back; as IBEX's loader, a row whose
time does not parse is skipped, a row with a gap or a corrupt point is kept with a gap."""

from __future__ import annotations

import math
from datetime import datetime

import numpy as np
import pytest

from bgrscrpt_ioc.plot import autosave

IBEX_FILE = """\
# run_number:00000039
# Axes: time, block_, block1_
2021-01-15 15:27:59.567993,,1.0
2021-01-15 15:28:08.182821,37.698516011455354,1.0
2021-01-15 15:28:16,38.4,17845047296.0
"""


def test_reads_a_file_written_by_ibex(tmp_path):
    path = tmp_path / "background_plot_data_01.csv"
    path.write_text(IBEX_FILE)
    saved = autosave.read(path, 2)
    assert saved.run_number == "00000039"
    assert saved.labels == ["block_", "block1_"]
    assert saved.skipped == 0
    assert saved.times[0] == datetime(2021, 1, 15, 15, 27, 59, 567993).timestamp()
    assert math.isnan(saved.values[0, 0]) and saved.values[0, 1] == 1.0
    assert saved.values[2].tolist() == [38.4, 17845047296.0]


def test_round_trip_keeps_times_values_and_gaps(tmp_path):
    path = tmp_path / "tmp" / "background_plot_data_02.csv"
    warnings = []
    writer = autosave.Writer(path, warnings.append)
    writer.start("00001234", ["Sample", "Setpoint"])
    rows = [(1700000000.25, [1.5, 300.0]), (1700000000.75, [math.nan, 300.0])]
    for t, values in rows:
        writer.write(t, values)
    writer.close()
    text = path.read_text().splitlines()
    assert text[:2] == ["# run_number:00001234", "# Axes: time, Sample, Setpoint"]
    assert text[3].split(",")[1] == ""  # a gap is an empty cell, as IBEX writes None
    saved = autosave.read(path, 2)
    assert saved.times.tolist() == pytest.approx([1700000000.25, 1700000000.75], abs=1e-6)
    assert saved.values[0].tolist() == [1.5, 300.0]
    assert math.isnan(saved.values[1, 0])
    assert not warnings


def test_rows_with_gaps_or_corrupt_points_are_kept_with_gaps(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text(
        IBEX_FILE
        + "2021-01-15 15:33:58.708184,18.97,17745444sad21312asczx864.0\n"  # a corrupt point
        + "not a time,1.0,2.0\n"  # no time: the row goes
        + "2021-01-15 15:34:06.721737,18.9\n"  # a value missing
        + "\x00\x00\x00\n"
        + "2021-01-15 15:34:10,None,None\n"  # gaps as IBEX's plot writes them
        + "2021-01-15 15:34:14.710416,23.37,17771368448.0,99\n"  # one too many
    )
    saved = autosave.read(path, 2)
    assert saved.skipped == 2
    assert saved.skipped_lines == [7, 9]
    assert saved.row_errors == [
        "Invalid isoformat string: 'not a time'",
        f"Invalid isoformat string: {chr(0) * 3!r}",
    ]
    assert saved.bad_points == ["17745444sad21312asczx864.0"]
    assert len(saved.times) == 7
    rows = [[None if math.isnan(v) else v for v in row] for row in saved.values.tolist()]
    assert rows[3:] == [[18.97, None], [18.9, None], [None, None], [23.37, 17771368448.0]]


def test_run_numbers_match_as_numbers():
    assert autosave.same_run("00000039", "39")
    assert autosave.same_run(" 00001234\n", "00001234")
    assert not autosave.same_run("00000039", "00000040")
    assert not autosave.same_run(None, "39")
    assert not autosave.same_run("None", None)
    assert not autosave.same_run("garbage", "39")


def test_data_file_is_under_icpvardir_tmp(monkeypatch, tmp_path):
    monkeypatch.setenv("ICPVARDIR", str(tmp_path))
    assert autosave.data_file(2) == tmp_path / "tmp" / "background_plot_data_02.csv"
    assert autosave.data_file(1, "/x") == autosave.Path("/x/tmp/background_plot_data_01.csv")


def test_a_failing_disk_warns_once_and_never_raises(tmp_path):
    blocker = tmp_path / "tmp"
    blocker.write_text("a file where the directory should be")
    warnings = []
    writer = autosave.Writer(blocker / "background_plot_data_01.csv", warnings.append)
    writer.start("1", ["a"])
    writer.write(1.0, [1.0])
    writer.write(2.0, [2.0])
    assert len(warnings) == 1 and "cannot write" in warnings[0]


def test_rows_format_as_ibex_does():
    t = datetime(2021, 1, 15, 15, 27, 59, 567993).timestamp()
    assert autosave.format_row(t, [np.nan, 1.0, 2.5]) == "2021-01-15 15:27:59.567993,,1.0,2.5\n"
