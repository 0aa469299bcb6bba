"""The plot's data file, in IBEX's format: ``$ICPVARDIR/tmp/background_plot_data_NN.csv``.

::

    # run_number:00001234
    # Axes: time, Sample, Setpoint
    2021-01-15 15:27:59.567993,291.5,300.0
    2021-01-15 15:28:00.068102,,300.0

The first line carries the run number the data belongs to, the second names the
series for people; every row is a local ISO time then one value per series,
empty for a gap (IBEX's plot writes ``None``). A plot that restarts during the
same run reloads the file as IBEX's loader does: a row whose time does not
parse is skipped; a row with an empty, ``None`` or corrupt value, or too few
values, is kept with gaps there; nothing is ever fatal.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TextIO

import numpy as np

RUN_NUMBER_TAG = "# run_number:"
AXES_TAG = "# Axes: "


def data_file(ioc_number: int, var_dir: str | os.PathLike | None = None) -> Path:
    """``$ICPVARDIR/tmp/background_plot_data_NN.csv`` (or under ``var_dir`` when given)."""
    base = Path(var_dir if var_dir is not None else os.environ.get("ICPVARDIR", "."))
    return base / "tmp" / f"background_plot_data_{int(ioc_number):02d}.csv"


def header(run_number: object, labels: Sequence[str]) -> str:
    return f"{RUN_NUMBER_TAG}{run_number}\n{AXES_TAG}time, {', '.join(labels)}\n"


def format_row(t: float, values: Iterable[float]) -> str:
    """One row: local ISO time (as ``str(datetime)``), then values; NaN is written empty."""
    cells = [str(datetime.fromtimestamp(t))]
    cells += ["" if v is None or math.isnan(v) else repr(float(v)) for v in values]
    return ",".join(cells) + "\n"


def same_run(saved: object, current: object) -> bool:
    """Run numbers compare as integers (``00001234`` == ``1234``); unknown never matches."""
    try:
        return int(str(saved).strip()) == int(str(current).strip())
    except (TypeError, ValueError):
        return False


@dataclass
class Saved:
    """What a data file holds."""

    run_number: str | None
    labels: list[str]
    times: np.ndarray
    values: np.ndarray  # shape (rows, series); NaN for a gap
    skipped: int = 0  # rows whose time did not parse
    skipped_lines: list[int] = field(default_factory=list)  # the first few, 1-based
    row_errors: list[str] = field(default_factory=list)  # why, for the first few
    bad_points: list[str] = field(default_factory=list)  # values that did not parse (gaps now)


MAX_REPORTED = 5  # skipped rows described one by one


def read(path: str | os.PathLike, series: int) -> Saved:
    """Parse a data file for ``series`` series. Raises OSError if it cannot be read."""
    run_number: str | None = None
    labels: list[str] = []
    times: list[float] = []
    rows: list[list[float]] = []
    saved = Saved(None, [], np.empty(0), np.empty((0, series)))
    with open(path, encoding="utf-8", errors="replace") as stream:
        for number, line in enumerate(stream, 1):
            line = line.rstrip("\r\n")
            if line.startswith("#"):
                if number == 1 and line.startswith(RUN_NUMBER_TAG):
                    run_number = line[len(RUN_NUMBER_TAG) :].strip()
                elif line.startswith(AXES_TAG):
                    labels = [s.strip() for s in line[len(AXES_TAG) :].split(",")][1:]
                continue
            if not line.strip():
                continue
            cells = line.split(",")
            try:
                t = datetime.fromisoformat(cells[0]).timestamp()
            except ValueError as exc:
                saved.skipped += 1
                if len(saved.skipped_lines) < MAX_REPORTED:
                    saved.skipped_lines.append(number)
                    saved.row_errors.append(str(exc))
                continue
            times.append(t)
            rows.append([_value(cell, saved.bad_points) for cell in cells[1 : series + 1]])
            rows[-1] += [math.nan] * (series - len(rows[-1]))
    saved.run_number, saved.labels = run_number, labels
    saved.times = np.array(times, dtype=np.float64)
    saved.values = np.array(rows, dtype=np.float64).reshape(len(rows), series)
    return saved


def _value(cell: str, bad: list[str]) -> float:
    """A cell as a number: empty or ``None`` is a gap; anything else that is not a
    number is a gap too, and noted in ``bad``."""
    if not cell.strip() or "None" in cell:
        return math.nan
    try:
        return float(cell)
    except ValueError:
        bad.append(cell)
        return math.nan


class Writer:
    """Appends rows to the data file; a failing disk is reported once, never raised."""

    def __init__(self, path: Path, warn):
        self.path = path
        self._warn = warn
        self._stream: TextIO | None = None
        self._failed = False

    def start(self, run_number: object, labels: Sequence[str]) -> None:
        """A fresh file (a new run, or nothing worth reloading)."""
        self.close()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 - kept open
            self._stream.write(header(run_number, labels))
            self._stream.flush()
            self._failed = False
        except OSError as exc:
            self._fail(exc)

    def resume(self) -> None:
        """Keep appending to the file as it is (its run is still the current one)."""
        self.close()
        try:
            self._stream = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
        except OSError as exc:
            self._fail(exc)

    def write(self, t: float, values: Iterable[float]) -> None:
        if self._stream is None:
            return
        try:
            self._stream.write(format_row(t, values))
            # Flushed every row, as IBEX's file is: a killed script loses nothing.
            self._stream.flush()
        except OSError as exc:
            self._fail(exc)

    def close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.close()
            self._stream = None

    def _fail(self, exc: OSError) -> None:
        if not self._failed:
            self._warn(f"background plot: cannot write {self.path}: {exc}")
        self._failed = True
        self.close()
