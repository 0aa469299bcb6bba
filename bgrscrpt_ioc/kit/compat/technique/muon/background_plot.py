"""``BackgroundBlockPlot``: a live plot of blocks, as IBEX's muon technique scripts offer it.

Usage, unchanged from an instrument's background script::

    from technique.muon.background_plot import BackgroundBlockPlot

    plot = BackgroundBlockPlot([("Temp_Sample", "value"), ("Temp_SP", "setpoint")],
                               "Temperature").start()

``start()`` returns the plot, which keeps running in the background. Its live
view (a matplotlib WebAgg page, what the IBEX GUI's plot window shows) is on
port 8989 or the next free one, and its URL goes to the slot's ``PLOT_URL``.
Samples are kept in bounded memory and drawn at the page's pixel width, so the
plot stays fast for as long as it runs. Data is autosaved to
``$ICPVARDIR/tmp/background_plot_data_NN.csv`` and reloaded on restart when the
run number matches; a new run number while RUNNING starts the plot afresh. A
block that is disconnected or INVALID is a gap in its line.
"""

import os
import re

from genie_python import genie as g

from bgrscrpt_ioc import script
from bgrscrpt_ioc.plot import autosave
from bgrscrpt_ioc.plot.block_plot import BlockPlot

BLOCK_PREFIX = "CS:SB:"
RUN_STATE_PV = "DAE:RUNSTATE"
RUN_NUMBER_PV = "DAE:RUNNUMBER"


def _slot_number():
    """NN of the slot this script runs in (``BGRSCRPT_IOC_NAME``), else 1."""
    match = re.search(r"(\d+)$", os.environ.get("BGRSCRPT_IOC_NAME", ""))
    return int(match.group(1)) if match else 1


class BackgroundBlockPlot:
    """A plot of blocks against time; the figure is named "<y_axis_label> Plot".

    Args:
        block_and_name_list: (block, legend label) pairs
        y_axis_label: the y axis label (and the figure's name)
        ioc_number: NN of the data file; by default the slot the script runs in,
            so two slots plotting never share a file
        interval: seconds between samples
    """

    def __init__(self, block_and_name_list, y_axis_label, ioc_number=None, interval=0.5):
        pairs = [tuple(pair) for pair in block_and_name_list]
        self.y_axis_label = y_axis_label
        self.ioc_number = _slot_number() if ioc_number is None else int(ioc_number)
        self.interval = interval
        self._plot = BlockPlot(
            [g.prefix_pv_name(BLOCK_PREFIX + block) for block, _ in pairs],
            [name for _, name in pairs],
            y_axis_label,
            title=f"{y_axis_label} Plot",
            data_file=autosave.data_file(self.ioc_number),
            interval=interval,
            run_number_pv=g.prefix_pv_name(RUN_NUMBER_PV),
            run_state_pv=g.prefix_pv_name(RUN_STATE_PV),
        )

    def start(self):
        """Start sampling and serving; returns this plot, which keeps running in the background."""
        self._plot.start()
        script.notify(PLOT_URL=self._plot.url)
        print(f"Background plot: started, {self._plot.url} (data: {self._plot.data_file})")
        return self

    def stop(self):
        """Stop sampling and serving."""
        self._plot.stop()
        script.notify(PLOT_URL="")

    @property
    def url(self):
        """Where the live page is served."""
        return self._plot.url

    @property
    def snapshot_url(self):
        """A PNG of the plot as it is now, e.g. for an e-log."""
        return self._plot.snapshot_url

    @property
    def data_file(self):
        return self._plot.data_file
