"""``module://genie_python.matplotlib_backend.ibex_websocket_backend``, as scripts select it.

IBEX's backend serves pyplot figures on port 8988 (primary) or 8989
(secondary) and asks the IBEX GUI, through py4j, to open a window on them.
This one serves the same figures on the same ports (or the next free one) as a
page any browser opens, and puts its address in the slot's ``PLOT_URL``: see
:mod:`bgrscrpt_ioc.plot.pyplot_backend`, which it is.
"""

# Show, show, draw_if_interactive and new_figure_manager*: set on pyplot_backend by
# matplotlib's @_Backend.export when it loads, so mypy cannot see them. Every name is
# what matplotlib and scripts read from this module (hence F401).
from bgrscrpt_ioc.plot.pyplot_backend import (  # type: ignore[attr-defined]  # noqa: F401
    DEFAULT_HOST,
    PRIMARY_WEB_PORT,
    SECONDARY_WEB_PORT,
    FigureCanvas,
    FigureManager,
    Show,
    backend_version,
    draw_if_interactive,
    figure_numbers,
    ibex_open_plot_window,
    max_number_of_figures,
    new_figure_manager,
    new_figure_manager_given_figure,
    plot_url,
    set_up_plot_default,
    show,
)
