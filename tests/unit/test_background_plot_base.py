"""``technique.muon.background_plot.BackgroundPlot`` has IBEX's hooks and IBEX's reloading.

InstrumentScripts tests its plot module with ``unittest``: ``BackgroundPlot``
built with ``interval=None, ioc_number=1``, ``data``/``data_x`` set by hand, the
save file and ``print`` mocked, and the exact warnings checked. The same kind of
test, written here, runs in a fresh interpreter against the IOC's module (found
through the compat directory, as a script finds it), so that a test written for
IBEX's module passes against this one.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from bgrscrpt_ioc.supervisor.env import kit_root

UNITTEST = """
import datetime
import os
import unittest
from unittest.mock import mock_open, patch

os.environ["GENIE_SIMULATE"] = "1"  # as InstrumentScripts' tests: no instrument needed

from technique.muon.background_plot import BackgroundPlot

ROW = "2021-01-15 15:27:59.567993,1.1,1.0,1.0,37.698516011455354,17845047296.0"
GAPS = "2021-01-15 15:27:59.567993,,1.0,,37.698516011455354,17845047296.0"
BAD_TIME = "20-21-01-15 15:27:595.6567993,1.1,1.0,1.0,37.698516011455354,17845047296.0"
BAD_POINTS = "2021-01-15 15:27:59.567993,1a.1,1.0,1.0,37.698516xxxcz011455354,17845047296.0"


class LoadFromSave(unittest.TestCase):
    def setUp(self):
        self.plot = BackgroundPlot(interval=None, ioc_number=1)
        self.plot.data = [[1.0], [2.0], [3.0], [4.0], [5.0]]
        self.plot.data_x = [datetime.datetime(2021, 1, 21, 14, 49, 50, 653244)]

    def load(self, text):
        with patch("builtins.open", new_callable=mock_open, read_data=text), patch(
            "builtins.print"
        ) as printed:
            self.plot.load_data_from_save()
        return printed

    def test_a_good_row_loads_silently(self):
        self.load(ROW).assert_not_called()
        self.assertEqual(self.plot.data[0], [1.1, 1.0])
        self.assertEqual(len(self.plot.data_x), 2)

    def test_empty_fields_are_gaps_silently(self):
        self.load(GAPS).assert_not_called()
        self.assertEqual([d[0] for d in self.plot.data], [None, 1.0, None, 37.698516011455354,
                                                         17845047296.0])

    def test_a_bad_time_warns_and_skips_the_row(self):
        self.load(BAD_TIME).assert_called_with(
            "WARNING - Save file may be corrupted: Invalid isoformat string: "
            "'20-21-01-15 15:27:595.6567993'"
        )
        self.assertEqual(self.plot.data[0], [1.0])

    def test_corrupt_points_warn_once_and_keep_the_row(self):
        self.load(BAD_POINTS).assert_called_with(
            "WARNING - Save file may be corrupted: 2 data points could not be appended "
            "to the dataset: ['1a.1', '37.698516xxxcz011455354']"
        )
        self.assertEqual([d[0] for d in self.plot.data], [None, 1.0, 1.0, None, 17845047296.0])

    def test_an_ioc_number_is_required(self):
        with self.assertRaises(ValueError):
            BackgroundPlot(interval=1)

    def test_the_hooks_are_there(self):
        for hook in ("get_data_point", "get_data_set_labels", "set_up_plot", "update",
                     "update_data", "update_figure", "should_clear_plot", "clear_plot",
                     "saved_data_matches_current_dataset", "start_new_data_file",
                     "save_data_point", "load_data_from_save"):
            self.assertTrue(callable(getattr(self.plot, hook)), hook)


if __name__ == "__main__":
    unittest.main()
"""


def test_instrument_scripts_style_unittest_passes_against_our_module(tmp_path):
    test_file = tmp_path / "test_background_plot.py"
    test_file.write_text(textwrap.dedent(UNITTEST))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(kit_root() / "compat"), ICPVARDIR=str(tmp_path / "var"))
    out = subprocess.run(
        [sys.executable, "-m", "unittest", "-v", "test_background_plot"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "Ran 6 tests" in out.stderr and "OK" in out.stderr
    # Nothing written where IBEX's module would write: the file goes under $ICPVARDIR.
    assert not Path(tmp_path, "C:").exists()
