"""Background plots, as InstrumentScripts' ``technique.muon.background_plot`` offers them.

``BackgroundBlockPlot``: a live plot of blocks. Usage, unchanged from an
instrument's background script::

    from technique.muon.background_plot import BackgroundBlockPlot

    plot = BackgroundBlockPlot([("Temp_Sample", "value"), ("Temp_SP", "setpoint")],
                               "Temperature").start()

``BackgroundPlot``: the base class, with IBEX's hooks, for a script's own plot::

    class Pressure(BackgroundPlot):
        def get_data_point(self):
            return [datetime.now(), read_gauge()]

        def get_data_set_labels(self):
            return ["pressure"]

    Pressure(interval=1, figure_name="Pressure", ioc_number=2).start()

``start()`` returns the plot, which keeps running in the background (IBEX's
never returns). The live view, a matplotlib WebAgg page (what the IBEX GUI's
plot window shows), is on port 8989 or the next free one, and its URL goes to
the slot's ``PLOT_URL``. Data is saved to
``$ICPVARDIR/tmp/background_plot_data_NN.csv`` in IBEX's format.

A ``BackgroundBlockPlot`` whose data hooks are not overridden runs on a
bounded, pixel-width engine (:mod:`bgrscrpt_ioc.plot.block_plot`): fast for as
long as it runs, a block that is disconnected or INVALID a gap, a new run
number while RUNNING starting it afresh. Every other plot runs IBEX's loop
through the hooks: ``get_data_point`` every ``interval`` seconds, then
``update_figure``, with pyplot on the IOC's web backend.
"""

from __future__ import annotations

import os
import re
import threading
from datetime import datetime
from random import randrange

import matplotlib

from bgrscrpt_ioc import script
from bgrscrpt_ioc.plot import autosave
from bgrscrpt_ioc.plot import pyplot_backend as backend

matplotlib.use("module://bgrscrpt_ioc.plot.pyplot_backend")
matplotlib.rcParams["axes.formatter.useoffset"] = False

import matplotlib.dates as mdates  # noqa: E402 - after the backend is chosen
from matplotlib import pyplot  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

DEFAULT_FIGURE_NAME = "Background Plot"
BLOCK_PREFIX = "CS:SB:"
# IBEX's C:\Instrument\var\tmp\...: here under $ICPVARDIR (autosave.data_file).
SAVE_FILE = os.path.join(
    os.environ.get("ICPVARDIR", "."), "tmp", "background_plot_data_{ioc_number:02d}.csv"
)

# The hooks a subclass may override; a BackgroundBlockPlot that overrides none of
# them runs on the bounded engine.
HOOKS = (
    "get_data_point", "get_data_set_labels", "set_up_plot", "should_clear_plot", "update",
    "update_data", "update_figure", "clear_plot", "load_data_from_save", "save_data_point",
    "saved_data_matches_current_dataset", "start_new_data_file", "_first_point",
)  # fmt: skip


def _slot_number() -> int:
    """NN of the slot this script runs in (``BGRSCRPT_IOC_NAME``), else 1."""
    match = re.search(r"(\d+)$", os.environ.get("BGRSCRPT_IOC_NAME", ""))
    return int(match.group(1)) if match else 1


class BackgroundPlot(threading.Thread):
    """A plot of points that keeps updating; subclasses say what the points are.

    Args:
        interval: seconds between points
        figure_name: the figure's (and page's) name
        ioc_number: NN of the data file ``background_plot_data_NN.csv`` (required,
            as in IBEX)
    """

    def __init__(self, interval, figure_name=DEFAULT_FIGURE_NAME, ioc_number=None):
        if ioc_number is None:
            raise ValueError("IOC number must be set")
        super().__init__(name=f"background plot {figure_name}", daemon=False)
        backend.set_up_plot_default(is_primary=False, should_open_ibex_window_on_show=False)
        self.data_x = None  # the points' times (datetime)
        self.data = None  # one list of values per line
        self.lines = []
        self.figure = None
        self.label_y_axis = "Values"
        self._interval = interval
        self._save_file = str(autosave.data_file(int(ioc_number)))
        self._figure_name = figure_name
        self._stopped = threading.Event()

    # ---- running ---------------------------------------------------------------------

    def start(self):
        """Make the figure, load or start the data file, serve it, and keep updating it
        in the background. Returns the plot (IBEX's never returns)."""
        if pyplot.fignum_exists(self._figure_name):
            print("Figure already exists!")
            return self
        self.figure = pyplot.figure(self._figure_name)
        self._first_point()
        for data_set, label in zip(self.data, self.get_data_set_labels(), strict=False):
            (line,) = self.figure.gca().plot(self.data_x, data_set, "-", label=label)
            self.lines.append(line)
        self.figure.gca().xaxis_date()
        self.set_up_plot()
        if self.saved_data_matches_current_dataset():
            self.load_data_from_save()
        else:
            self.start_new_data_file()
        pyplot.show()
        pyplot.ion()
        print("Background plot: Started")
        super().start()
        return self

    def run(self) -> None:
        while not self._stopped.wait(self._interval or 0.5):
            try:
                self.update()
            except Exception as ex:  # as IBEX: report, keep plotting
                print(f"Update plot failed with {ex}")
            backend.push_frames()

    def stop(self) -> None:
        """Stop updating (the page stays until the script ends)."""
        self._stopped.set()

    @property
    def url(self) -> str:
        """Where the live page is served."""
        return backend.plot_url()

    # ---- IBEX's hooks ---------------------------------------------------------------

    def set_up_plot(self):
        """Anything to do to the figure once it exists (labels, a legend)."""

    def _first_point(self):
        """Take points until one has a value; set up ``data_x`` and ``data`` from it."""
        attempt = 0
        self.data = None
        while self.data is None:
            point = self.get_data_point()
            try:
                if len(point) < 2:
                    raise TypeError
            except TypeError:
                raise TypeError(
                    "Error in plot: get_data_point() must return a list of at least two entries."
                ) from None
            self.data_x = [point[0]]
            if all(value is None for value in point[1:]):
                if attempt % 10 == 0:
                    print("background Plot: Can not read initial point")
                attempt += 1
            else:
                self.data = [[value] for value in point[1:]]

    def load_data_from_save(self):
        """Put the saved points before the ones taken since the plot started.

        As IBEX's: a row whose time does not parse is skipped with a warning; an
        empty or ``None`` value is a gap; a value that is not a number is a gap, and
        the values that were are listed in one warning.
        """
        loaded = [[] for _ in self.data]
        loaded_x = []
        corrupt = []
        with open(self._save_file) as csvfile:
            for row in csvfile:
                if row.startswith("#"):
                    continue
                cells = row.split(",")
                try:
                    loaded_x.append(datetime.fromisoformat(cells[0]))
                except (IndexError, ValueError) as e:
                    print(f"WARNING - Save file may be corrupted: {e}")
                    continue
                values = cells[1:] + [""] * (len(loaded) - len(cells) + 1)
                for data_set, cell in zip(loaded, values, strict=False):
                    if not cell or "None" in cell:
                        data_set.append(None)
                        continue
                    try:
                        data_set.append(float(cell))
                    except ValueError:
                        data_set.append(None)
                        corrupt.append(cell)
        if corrupt:
            print(
                f"WARNING - Save file may be corrupted: {len(corrupt)} data points could not "
                f"be appended to the dataset: {corrupt}"
            )
        for data_set, first in zip(loaded, self.data, strict=False):
            data_set.extend(first)
        loaded_x.extend(self.data_x)
        self.data = loaded
        self.data_x = loaded_x

    def update(self):
        """One step: start afresh when ``should_clear_plot``, else take a point; redraw."""
        if self.should_clear_plot():
            self.clear_plot()
            self.start_new_data_file()
        else:
            self.update_data()
        return self.update_figure()

    def start_new_data_file(self):
        """An empty data file."""
        os.makedirs(os.path.dirname(self._save_file) or ".", exist_ok=True)
        open(self._save_file, "w").close()

    def save_data_point(self, points):
        """Append ``points`` (time first) to the data file."""
        with open(self._save_file, "a") as csvfile:
            csvfile.write(",".join(str(x) for x in points) + "\n")

    def update_data(self):
        """Take the next point, save it and add it to ``data_x`` and ``data``."""
        point = self.get_data_point()
        self.save_data_point(point)
        self.data_x.append(point[0])
        for data_set, value in zip(self.data, point[1:], strict=False):
            data_set.append(value)

    def update_figure(self):
        """Show ``data`` on the lines; the time axis runs to a little past the newest point."""
        axes = self.figure.gca()
        for data_set, line in zip(self.data, self.lines, strict=False):
            line.set_data(self.data_x, [float("nan") if v is None else v for v in data_set])
        axes.relim()
        extra = (self.data_x[-1] - self.data_x[0]) / 20
        if extra:
            axes.set_xlim(left=self.data_x[0], right=self.data_x[-1] + extra)
        axes.xaxis.set_major_locator(MaxNLocator(5))
        axes.xaxis.set_major_formatter(mdates.DateFormatter("%d-%m-%y %H:%M"))
        axes.xaxis.set_tick_params(bottom=0.2, rotation=10)
        axes.autoscale_view()
        return self.lines

    def get_data_point(self):
        """The time, then one value per line (IBEX's example: random numbers)."""
        return datetime.now(), randrange(0, 50), randrange(25, 75), randrange(50, 100)

    def get_data_set_labels(self):
        """The lines' legend labels."""
        return [f"set {i + 1}" for i in range(len(self.data))]

    def should_clear_plot(self):
        """True to start afresh before the next point (never, here)."""
        return False

    def saved_data_matches_current_dataset(self):
        """True when the data file is worth loading (never, here)."""
        return False

    def clear_plot(self):
        """Start again from a first point."""
        self._first_point()
        self.update_figure()


class BackgroundBlockPlot(BackgroundPlot):
    """A plot of blocks against time, started afresh at each new run; the figure is
    named "<y_axis_label> Plot".

    Args:
        block_and_name_list: (block, legend label) pairs
        y_axis_label: the y axis label (and the figure's name)
        ioc_number: NN of the data file; by default the slot the script runs in,
            so two slots plotting never share a file
        interval: seconds between samples
    """

    def __init__(self, block_and_name_list, y_axis_label, ioc_number=None, interval=0.5):
        from genie_python import genie as g
        from genie_python.genie_dae import DAE_PVS_LOOKUP

        number = _slot_number() if ioc_number is None else int(ioc_number)
        super().__init__(interval, f"{y_axis_label} Plot", ioc_number=number)
        self.ioc_number = number
        self.interval = interval
        self.y_axis_label = y_axis_label
        # The script may not have called set_instrument: then the IOC's prefix.
        prefix = g.prefix_pv_name("") or os.environ.get("MYPVPREFIX", "")
        pairs = [tuple(pair) for pair in block_and_name_list]
        self._legend_labels = [name for _, name in pairs]
        self._pv_names = [f"{prefix}{BLOCK_PREFIX}{block}" for block, _ in pairs]
        self._run_state_pv = prefix + DAE_PVS_LOOKUP["runstate"]
        self._run_number_pv = prefix + DAE_PVS_LOOKUP["runnumber"]
        self.current_run_number = None
        self._engine = None

    def _uses_hooks(self) -> bool:
        return any(getattr(type(self), h) is not getattr(BackgroundBlockPlot, h) for h in HOOKS)

    def start(self):
        """Start sampling and serving; returns this plot, which keeps running."""
        if self._uses_hooks():
            return super().start()
        from bgrscrpt_ioc.plot.block_plot import BlockPlot

        self._engine = BlockPlot(
            self._pv_names,
            self._legend_labels,
            self.y_axis_label,
            title=self._figure_name,
            data_file=autosave.data_file(self.ioc_number),
            interval=self.interval,
            run_number_pv=self._run_number_pv,
            run_state_pv=self._run_state_pv,
        ).start()
        script.notify(PLOT_URL=self._engine.url)
        print(f"Background plot: started, {self._engine.url} (data: {self._engine.data_file})")
        return self

    def stop(self):
        """Stop sampling and serving."""
        if self._engine is not None:
            self._engine.stop()
            script.notify(PLOT_URL="")
        super().stop()

    @property
    def url(self):
        """Where the live page is served."""
        return self._engine.url if self._engine is not None else super().url

    @property
    def snapshot_url(self):
        """A PNG of the plot as it is now, e.g. for an e-log."""
        return self._engine.snapshot_url if self._engine is not None else self.url + "plot.png"

    @property
    def data_file(self):
        return self._engine.data_file if self._engine is not None else self._save_file

    # ---- IBEX's hooks, over genie_python (for subclasses that override some) ----------

    def _get_pv_with_timeout(self, pv_name, to_string=False):
        from genie_python.genie_cachannel_wrapper import CaChannelWrapper

        timeout = (self._interval or 0.5) / 4.0
        return CaChannelWrapper.get_pv_value(pv_name, timeout=timeout, to_string=to_string)

    def _get_pv_none_on_invalid_alarm(self, pv_name):
        from genie_python.genie_cachannel_wrapper import (
            CaChannelException,
            UnableToConnectToPVException,
        )

        try:
            data = self._get_pv_with_timeout(pv_name)
            if self._get_pv_with_timeout(pv_name + ".SEVR") == "INVALID":
                data = None
        except (CaChannelException, UnableToConnectToPVException):
            data = None
        return data

    def set_up_plot(self):
        pyplot.legend(
            bbox_to_anchor=(0.0, 1.02, 1.0, 0.102),
            loc=3,
            ncol=min(3, len(self.data)),
            mode="expand",
            borderaxespad=0.0,
        )
        self.figure.gca().set_xlabel("Time")
        self.figure.gca().set_ylabel(self.y_axis_label)
        from genie_python import genie as g

        self.current_run_number = g.get_runnumber()

    def get_data_point(self):
        return [datetime.now()] + [self._get_pv_none_on_invalid_alarm(n) for n in self._pv_names]

    def should_clear_plot(self):
        from genie_python.genie_cachannel_wrapper import (
            CaChannelException,
            UnableToConnectToPVException,
        )

        try:
            number = self._get_pv_with_timeout(self._run_number_pv)
            if number != self.current_run_number:
                state = self._get_pv_with_timeout(self._run_state_pv, to_string=True)
                if state == "RUNNING":
                    self.current_run_number = number
                    return True
            return False
        except (CaChannelException, UnableToConnectToPVException):
            return False

    def get_data_set_labels(self):
        return self._legend_labels

    def saved_data_matches_current_dataset(self):
        """True when the data file is of this run and has as many columns."""
        try:
            saved_run, columns = self._read_header()
        except FileNotFoundError:
            print("No valid save file found")
            return False
        if autosave.same_run(saved_run, self.current_run_number) and columns == len(self.data) + 1:
            print("Dataset matches - loading values from save")
            return True
        print("Dataset doesn't match - do not load from save")
        return False

    def _read_header(self):
        with open(self._save_file) as csvfile:
            run_line = csvfile.readline()
            csvfile.readline()
            row = csvfile.readline()
        return run_line.replace(autosave.RUN_NUMBER_TAG, ""), len(row.split(","))

    def start_new_data_file(self):
        print("Start new data file with custom header")
        os.makedirs(os.path.dirname(self._save_file) or ".", exist_ok=True)
        with open(self._save_file, "w") as csvfile:
            csvfile.write(autosave.header(self.current_run_number, self.get_data_set_labels()))
