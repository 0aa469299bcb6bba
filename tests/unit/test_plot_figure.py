"""The plot's figure without a server or Channel Access: IBEX's look, and blitted frames
that are pixel for pixel what a full render gives."""

from __future__ import annotations

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from bgrscrpt_ioc.plot.block_plot import BlockPlot


def make_plot(interval: float = 0.5) -> BlockPlot:
    plot = BlockPlot(
        ["P:CS:SB:A", "P:CS:SB:B"],
        ["value", "setpoint"],
        "Temperature",
        title="Temperature Plot",
        data_file=None,
        interval=interval,
    )
    plot._build_figure()
    return plot


def pixels(canvas) -> np.ndarray:
    return np.asarray(canvas.get_renderer().buffer_rgba()).copy()


def test_figure_looks_like_ibex():
    plot = make_plot()
    assert plot.manager.get_window_title() == "Temperature Plot"
    assert plot.axes.get_ylabel() == "Temperature"
    assert plot.axes.get_xlabel() == "Time"
    legend = plot.axes.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["value", "setpoint"]


def test_a_layered_frame_matches_a_full_render():
    plot = make_plot()
    canvas = plot.manager.canvas
    t0 = 1_700_000_000.0
    for i in range(3000):  # enough to be decimated to pixel columns
        plot.record(t0 + i * 0.5, [np.sin(i / 100), np.nan if 500 < i < 800 else 1.0])
    canvas.draw()
    full_before = plot.full_frames
    for i in range(3000, 3040):  # new samples inside the current limits
        plot.record(t0 + i * 0.5, [np.sin(i / 100), 1.0])
        canvas.draw()
    assert plot.full_frames == full_before  # the axes were not rendered again
    layered = pixels(canvas)
    FigureCanvasAgg.draw(canvas)  # everything, from scratch
    differ = (layered != pixels(canvas)).any(axis=2)
    # Only where the settled part of a line meets its newest column can antialiasing
    # blend twice: a few pixels per line, in one place.
    assert differ.sum() <= 15 * len(plot.lines)
    if differ.any():
        columns = np.flatnonzero(differ.any(axis=0))
        assert columns.max() - columns.min() <= 6


def test_diff_frames_rebuild_the_picture_in_a_browser():
    """Replays the frames as mpl.js does (a diff frame is drawn over the last picture)."""
    from io import BytesIO

    from PIL import Image

    plot = make_plot()
    canvas = plot.manager.canvas
    shown = None
    t0 = 1_700_000_000.0
    for i in range(400):
        plot.record(t0 + i, [np.sin(i / 7), 30.0 if i == 250 else np.cos(i / 9)])
        if i % 20 and i != 250:
            continue
        canvas.draw()
        png = canvas.get_diff_image()
        frame = np.asarray(Image.open(BytesIO(png)).convert("RGBA"))
        if canvas._current_image_mode == "full":
            shown = frame.copy()
        else:
            keep = frame[:, :, 3] == 0
            shown = np.where(keep[:, :, None], shown, frame)
        assert np.array_equal(shown, pixels(canvas)), f"frame {i} ({canvas._current_image_mode})"


def test_limits_move_in_steps_and_follow_the_data():
    plot = make_plot()
    canvas = plot.manager.canvas
    t0 = 1_700_000_000.0
    plot.record(t0, [1.0, 2.0])
    canvas.draw()
    assert plot.full_frames == 1
    for i in range(1, 5):  # a few samples inside the headroom: no new axes
        plot.record(t0 + i * 0.5, [1.5, 2.0])
        canvas.draw()
    assert plot.full_frames == 1
    plot.record(t0 + 3.0, [50.0, 2.0])  # out of the y range: the axes are drawn again
    canvas.draw()
    assert plot.full_frames == 2
    low, high = plot.axes.get_ylim()
    assert low < 1.0 and high > 50.0
    left, right = plot.axes.get_xlim()
    assert left * 86400 == t0 and right * 86400 > t0 + 3.0


def test_a_week_at_10_hz_draws_at_most_two_points_per_pixel_column():
    plot = make_plot(interval=0.1)
    n = 7 * 86400 * 10
    t = 1_700_000_000.0 + np.arange(n) * 0.1
    plot.samples.extend(t, np.stack([np.sin(t / 3600), np.cos(t / 3600)], axis=1))
    plot.manager.canvas.draw()
    columns = int(plot.axes.bbox.width)
    for line in plot.lines:
        assert len(line.get_xdata()) <= 2 * columns
    ydata = plot.lines[0].get_ydata()
    assert np.nanmax(ydata) > 0.999 and np.nanmin(ydata) < -0.999  # the peaks survive


def test_a_plot_with_no_data_yet_renders():
    plot = make_plot()
    plot.manager.canvas.draw()
    png = plot.snapshot("png")
    assert png.startswith(b"\x89PNG")
