"""What IBEX scripts assume that is not so here, put right as they are imported.

The script environment's ``sitecustomize`` calls these when a script imports
the module concerned:

- :func:`restore_plot_date` (``matplotlib.pyplot``): matplotlib 3.11 removed
  ``plot_date``, which InstrumentScripts' plot calls
  (``pyplot.plot_date(x, y, "-", label=...)``). Where matplotlib still has it,
  nothing changes.
- :func:`local_save_file` (``technique.muon.background_plot`` from an
  InstrumentScripts checkout): its data file is
  ``C:\\Instrument\\var\\tmp\\background_plot_data_NN.csv``, which off Windows
  is a relative path into directories that do not exist; it becomes
  ``$ICPVARDIR/tmp/background_plot_data_NN.csv`` (the directory made if need
  be), the file the IOC's own plot uses (the same format).
"""

from __future__ import annotations

import os
from typing import Any


def local_save_file(module: Any) -> None:
    """Point a Windows ``SAVE_FILE`` of IBEX's plot module at ``$ICPVARDIR/tmp`` (not on
    Windows; a module without one, or with another, is left alone)."""
    save_file = getattr(module, "SAVE_FILE", None)
    if os.name == "nt" or not isinstance(save_file, str) or not save_file.startswith("C:"):
        return
    name = save_file.replace("\\", "/").rsplit("/", 1)[-1]
    directory = os.path.join(os.environ.get("ICPVARDIR", "."), "tmp")
    os.makedirs(directory, exist_ok=True)  # as IBEX's var\tmp, which always exists
    module.SAVE_FILE = os.path.join(directory, name)


def _axes_plot_date(
    self: Any,
    x: Any,
    y: Any,
    fmt: str = "o",
    tz: Any = None,
    xdate: bool = True,
    ydate: bool = False,
    **kwargs: Any,
) -> list:
    """Plot with dates on x (and/or y): ``plot`` after ``xaxis_date``, as matplotlib did."""
    if xdate:
        self.xaxis_date(tz)
    if ydate:
        self.yaxis_date(tz)
    return self.plot(x, y, fmt, **kwargs)


def restore_plot_date(pyplot: Any = None) -> None:
    """Give ``Axes`` and ``pyplot`` their ``plot_date`` back, where they lack it."""
    from matplotlib.axes import Axes

    if not hasattr(Axes, "plot_date"):
        Axes.plot_date = _axes_plot_date  # type: ignore[attr-defined]
    if pyplot is None:
        import matplotlib.pyplot as pyplot
    if not hasattr(pyplot, "plot_date"):

        def plot_date(x: Any, y: Any, fmt: str = "o", tz: Any = None, xdate: bool = True,
                      ydate: bool = False, *, data: Any = None, **kwargs: Any) -> list:  # fmt: skip
            """``gca().plot_date(...)``, as pyplot had it."""
            if data is not None:
                kwargs["data"] = data
            return pyplot.gca().plot_date(x, y, fmt, tz, xdate, ydate, **kwargs)

        pyplot.plot_date = plot_date
