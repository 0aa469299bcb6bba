"""What matplotlib took away that IBEX scripts still call: ``plot_date`` (gone in 3.11).

The script environment's ``sitecustomize`` calls :func:`restore_plot_date` when
a script imports ``matplotlib.pyplot``, so that InstrumentScripts' plot module
(``pyplot.plot_date(x, y, "-", label=...)``) runs on the matplotlib the IOC
ships. Where matplotlib still has it, nothing changes.
"""

from __future__ import annotations

from typing import Any


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
