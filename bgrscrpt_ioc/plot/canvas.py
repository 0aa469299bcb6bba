"""The figure's canvas: frames rendered in layers, sent to browsers as sparse PNG diffs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.backends import backend_agg
from matplotlib.backends import backend_webagg_core as core
from matplotlib.transforms import Bbox

from bgrscrpt_ioc.plot.png import png_rgba, png_sparse

if TYPE_CHECKING:
    from bgrscrpt_ioc.plot.block_plot import BlockPlot


class LiveCanvas(core.FigureCanvasWebAggCore):
    """Renders a live frame in layers, so that a frame costs a few milliseconds.

    1. The background: axes, ticks, labels, grid and legend, rendered without
       the lines and the axes' frame. Rendered again only when the axis limits
       (which move in steps, see ``BlockPlot._update_artists``) or the canvas
       size change.
    2. The settled part of the lines: every pixel column before the newest one,
       whose min/max no new sample can change. Drawn again when a new column
       starts (or the decimation level changes, which the data shows).
    3. Each frame: the newest column's piece of each line, and the frame.
    """

    plot: BlockPlot | None = None
    _background = None
    _background_key: tuple | None = None
    _settled: tuple[Any, int, np.ndarray, np.ndarray] | None = None  # layer 2 and its data
    _live = None  # the part of the canvas layers 2 and 3 draw on: the axes, padded

    def draw(self):
        plot = self.plot
        if plot is None:
            return super().draw()
        plot._update_artists()
        key = (*self.get_width_height(physical=True), self.figure.dpi)
        self._png_is_old = True
        try:
            if plot.background_stale or self._background is None or key != self._background_key:
                plot.background_stale = False
                # The background is everything below the lines in a full render; the
                # axes' frame goes on top of the lines, so it is drawn with them.
                live = [*plot.lines, *plot.axes.spines.values()]
                for artist in live:
                    artist.set_visible(False)
                try:
                    backend_agg.FigureCanvasAgg.draw(self)
                finally:
                    for artist in live:
                        artist.set_visible(True)
                self._live = self._live_bbox(plot)
                self._background = self.copy_from_bbox(self._live)
                self._background_key = key
                self._settled = None
                plot.full_frames += 1
            self._draw_lines(plot)
            for spine in plot.axes.spines.values():
                plot.axes.draw_artist(spine)
        finally:
            self.manager.refresh_all()  # the frame to every browser

    def _draw_lines(self, plot: BlockPlot) -> None:
        x, y = plot.line_x, plot.line_y
        # Points of the newest pixel column share its x; everything before is settled.
        split = int(np.searchsorted(x, x[-1], side="left")) if len(x) else 0
        settled = self._settled
        if (
            settled is None
            or settled[1] != split
            or not np.array_equal(settled[2], x[:split])
            or not np.array_equal(settled[3], y[:split], equal_nan=True)
        ):
            self.restore_region(self._background)
            if split > 1:
                self._draw_points(plot, x[:split], y[:split])
            region = self.copy_from_bbox(self._live)
            self._settled = (region, split, x[:split].copy(), y[:split].copy())
        else:
            self.restore_region(settled[0])
        tail = max(split - 1, 0)  # from the last settled point, so the line joins up
        self._draw_points(plot, x[tail:], y[tail:])
        for i, line in enumerate(plot.lines):  # whole again, for full renders and snapshots
            line.set_data(x, y[:, i])

    def _live_bbox(self, plot: BlockPlot) -> Bbox:
        # Lines are clipped to the axes; the pad takes in the frame's own width.
        width, height = self.get_width_height(physical=True)
        box, pad = plot.axes.bbox, 4
        return Bbox.from_extents(
            max(0, int(box.x0) - pad),
            max(0, int(box.y0) - pad),
            min(width, int(box.x1) + pad + 1),
            min(height, int(box.y1) + pad + 1),
        )

    @staticmethod
    def _draw_points(plot: BlockPlot, x: np.ndarray, y: np.ndarray) -> None:
        for i, line in enumerate(plot.lines):
            line.set_data(x, y[:, i])
            plot.axes.draw_artist(line)

    def get_diff_image(self):
        """The next frame for the browsers as PNG: what changed since the last one
        (transparent elsewhere), or all of it when a browser needs a full frame.

        The protocol of matplotlib's WebAgg. A live frame changes a narrow strip
        (the newest column of each line), so only the rectangle that changed is
        compared and encoded; the rest is runs of zeros, compressed once and reused.
        """
        if not self._png_is_old:
            return None
        self._png_is_old = False
        pixels = np.asarray(self.get_renderer().buffer_rgba())
        buff = pixels.view(np.uint32).squeeze(2)
        last = self._last_buff
        if not self._force_full and buff.shape == last.shape:
            changed = buff != last
            rows = np.flatnonzero(changed.any(axis=1))
            if not rows.size:
                self.set_image_mode("diff")
                return png_sparse(buff.shape[1], buff.shape[0], np.empty((0, 0, 4), np.uint8), 0, 0)
            r0, r1 = int(rows[0]), int(rows[-1]) + 1
            cols = np.flatnonzero(changed[r0:r1].any(axis=0))
            c0, c1 = int(cols[0]), int(cols[-1]) + 1
            block = buff[r0:r1, c0:c1]
            opaque = block.view(np.uint8).reshape(*block.shape, 4)[:, :, 3].min() == 255
            if opaque:  # a diff cannot show transparency: else a full frame
                self.set_image_mode("diff")
                out = np.where(changed[r0:r1, c0:c1], block, 0)
                last[r0:r1, c0:c1] = block
                rgba = out.view(np.uint8).reshape(*out.shape, 4)
                if rgba.shape[1] * 4 > 65535 or out.size > buff.size // 4:
                    full = np.zeros_like(buff)
                    full[r0:r1, c0:c1] = out
                    return png_rgba(full.view(np.uint8).reshape(*buff.shape, 4))
                return png_sparse(buff.shape[1], buff.shape[0], rgba, r0, c0)
        self.set_image_mode("full")
        self._last_buff = buff.copy()
        self._force_full = False
        return png_rgba(pixels)
