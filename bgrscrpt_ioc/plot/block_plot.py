"""A live plot of PVs: sampled at an interval, autosaved, served as a WebAgg page.

Everything that touches the figure, the samples or the data file runs on the
plot server's loop (see :mod:`bgrscrpt_ioc.plot.server`): the tick that takes a
sample, the frames a browser asks for, and PNG snapshots. Channel Access
monitors only store the newest values (:mod:`bgrscrpt_ioc.plot.sampler`).
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from io import BytesIO
from pathlib import Path

import numpy as np
from matplotlib import dates as mdates
from matplotlib.figure import Figure

from bgrscrpt_ioc.plot import autosave
from bgrscrpt_ioc.plot.canvas import LiveCanvas
from bgrscrpt_ioc.plot.pyramid import DEFAULT_CAPACITY, MinMaxPyramid
from bgrscrpt_ioc.plot.sampler import Monitors
from bgrscrpt_ioc.plot.server import FIGURE_ID, FigureManager, PlotServer, wants_frame

SECONDS_PER_DAY = 86400.0
RUN_NUMBER_WAIT = 2.0  # at start: how long to wait for the DAE, to match the autosave
REVIEW_S = 10.0  # seconds between checks for PVs better polled than monitored


def _warn(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


MAX_POINTS_SHOWN = 20


def _warn_corrupt(saved: autosave.Saved) -> None:
    """What was wrong with a reloaded data file, in the words of IBEX's plot."""
    for error in saved.row_errors:
        _warn(f"WARNING - Save file may be corrupted: {error}")
    if saved.skipped > len(saved.row_errors):
        _warn(
            f"WARNING - Save file may be corrupted: {saved.skipped} rows skipped in all "
            f"(lines {', '.join(map(str, saved.skipped_lines))}, …)"
        )
    bad = saved.bad_points
    if bad:
        shown = repr(bad[:MAX_POINTS_SHOWN])[:-1] + (", …]" if len(bad) > MAX_POINTS_SHOWN else "]")
        _warn(
            f"WARNING - Save file may be corrupted: {len(bad)} data points could not be "
            f"appended to the dataset: {shown}"
        )


class BlockPlot:
    """Plot ``pv_names`` (legend ``labels``) against time, with the y axis ``y_label``.

    ``run_number_pv``/``run_state_pv`` (optional): when the run number changes
    while the run state is RUNNING, the plot and its data file start afresh.
    """

    def __init__(
        self,
        pv_names: Sequence[str],
        labels: Sequence[str],
        y_label: str,
        *,
        title: str,
        data_file: Path | None,
        interval: float = 0.5,
        run_number_pv: str | None = None,
        run_state_pv: str | None = None,
        port: int | None = None,
        capacity: int = DEFAULT_CAPACITY,
    ):
        if len(pv_names) != len(labels) or not pv_names:
            raise ValueError("one label per PV, and at least one PV")
        self.pv_names = list(pv_names)
        self.labels = list(labels)
        self.y_label = y_label
        self.title = title
        self.data_file = data_file
        self.interval = max(0.05, float(interval))
        self.run_number_pv = run_number_pv
        self.run_state_pv = run_state_pv
        self.samples = MinMaxPyramid(len(self.pv_names), capacity=capacity)
        self.server = PlotServer(port=port)
        self.run_number: str | None = None
        self.monitors: Monitors | None = None
        self.writer = autosave.Writer(data_file, _warn) if data_file is not None else None
        self.manager: FigureManager
        self._ticker: asyncio.Task | None = None
        self._artists_at: tuple[int, int] | None = None  # (samples, columns) last drawn
        self.ticks = 0
        self.frames = 0
        self._latest: list[float] = [np.nan] * len(self.pv_names)
        self._xlim = (np.nan, np.nan)
        self._ylim = (np.inf, -np.inf)
        self.full_frames = 0
        self._reviewed_at = time.monotonic()
        self.background_stale = True  # the axes must be rendered again before the next frame
        self.line_x = np.empty(0)  # what the lines show: x in matplotlib days, y (n, series)
        self.line_y = np.empty((0, len(self.pv_names)))

    # ---- start, from the script's thread -----------------------------------

    def start(self) -> BlockPlot:
        dae = [pv for pv in (self.run_number_pv, self.run_state_pv) if pv]
        self.monitors = Monitors(self.pv_names + dae, text_names=dae)
        self.run_number = self._wait_for_run_number()
        self.server.start()
        self.server.call(self._setup)
        return self

    def _wait_for_run_number(self) -> str | None:
        if not self.run_number_pv or self.monitors is None:
            return None
        deadline = time.monotonic() + RUN_NUMBER_WAIT
        while time.monotonic() < deadline:
            value = self.monitors.latest_text(self.run_number_pv)
            if value is not None:
                return value.strip()
            time.sleep(0.02)
        _warn(f"background plot: no run number from {self.run_number_pv}")
        return None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def snapshot_url(self) -> str:
        return self.server.snapshot_url

    def stop(self) -> None:
        """Stop sampling and serving (the process may then exit)."""
        if self.server.loop is not None and self.server.loop.is_running():
            self.server.call(self._teardown)
        self.server.stop()
        if self.monitors is not None:
            self.monitors.close()

    # ---- on the server's loop ----------------------------------------------

    def _setup(self) -> None:
        self._build_figure()
        self._restore_or_start_file()
        self.server.serve(self)
        self._ticker = asyncio.get_running_loop().create_task(self._tick_forever())

    def _teardown(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
        if self.writer is not None:
            self.writer.close()

    def _build_figure(self) -> None:
        self.figure = Figure(figsize=(8, 5), dpi=100)
        canvas = LiveCanvas(self.figure)
        canvas.plot = self
        self.manager = FigureManager(canvas, FIGURE_ID)
        self.manager.set_window_title(self.title)
        ax = self.axes = self.figure.add_subplot()
        self.lines = [ax.plot([], [], "-", label=label)[0] for label in self.labels]
        # As IBEX's plot: the legend in a band above the axes, time along x.
        ax.legend(
            bbox_to_anchor=(0.0, 1.02, 1.0, 0.102),
            loc="lower left",
            ncol=min(3, len(self.labels)),
            mode="expand",
            borderaxespad=0.0,
        )
        ax.set_xlabel("Time")
        ax.set_ylabel(self.y_label)
        tz = datetime.now().astimezone().tzinfo
        locator = mdates.AutoDateLocator(tz=tz)
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=tz))
        ax.grid(True, alpha=0.3)
        self.figure.subplots_adjust(top=0.85)

    def _restore_or_start_file(self) -> None:
        if self.writer is None or self.data_file is None:
            return
        saved = None
        if self.data_file.exists():
            try:
                saved = autosave.read(self.data_file, len(self.labels))
            except OSError as exc:
                _warn(f"background plot: cannot read {self.data_file}: {exc}")
        if saved is not None and autosave.same_run(saved.run_number, self.run_number):
            _warn_corrupt(saved)
            order = np.argsort(saved.times, kind="stable")
            self.samples.extend(saved.times[order], saved.values[order])
            print(
                f"background plot: reloaded {len(saved.times)} rows of run {self.run_number} "
                f"from {self.data_file}",
                flush=True,
            )
            self.writer.resume()
        else:
            self.writer.start(self.run_number, self.labels)

    async def _tick_forever(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            try:
                self._tick()
            except Exception as exc:  # as IBEX: report, keep plotting
                _warn(f"background plot: update failed with {exc!r}")
            next_at += self.interval
            now = loop.time()
            if next_at < now:  # fell behind (a suspended machine): do not catch up in a burst
                next_at = now + self.interval
            await asyncio.sleep(next_at - now)

    def _tick(self) -> None:
        assert self.monitors is not None
        self.ticks += 1
        if self._run_changed():
            self.samples.clear()
            self._xlim, self._ylim = (np.nan, np.nan), (np.inf, -np.inf)
            if self.writer is not None:
                self.writer.start(self.run_number, self.labels)
        self._latest = self.monitors.latest()[: len(self.pv_names)]
        self.record(time.time(), self._latest)
        self.monitors.poll()
        now = time.monotonic()
        if now - self._reviewed_at >= REVIEW_S:
            for name in self.monitors.review(now - self._reviewed_at, self.interval):
                print(f"background plot: {name} updates faster than it is sampled: polled")
            self._reviewed_at = now
        if self.manager.web_sockets and wants_frame(self.manager.web_sockets):
            # Render and push the frame now: no "draw" round trip through the browser.
            self.manager.canvas.draw()

    def record(self, t: float, values: Sequence[float]) -> None:
        """Keep one sample (NaN for a gap) and append it to the data file (on the loop)."""
        self.samples.append(t, values)
        if self.writer is not None:
            self.writer.write(t, values)

    def _run_changed(self) -> bool:
        """A new run number while RUNNING (IBEX: the plot restarts with each run)."""
        if not self.run_number_pv or self.monitors is None:
            return False
        number = self.monitors.latest_text(self.run_number_pv)
        if number is None or number.strip() == (self.run_number or ""):
            return False
        state = self.monitors.latest_text(self.run_state_pv) if self.run_state_pv else "RUNNING"
        if state != "RUNNING":
            return False
        self.run_number = number.strip()
        return True

    def _update_artists(self) -> None:
        """Decimated data on the lines; ``background_stale`` when the axis limits moved.

        Limits move in steps, not with every sample: the time axis runs from
        the first sample to a little past the newest (10 % of the span, at
        least 60 intervals or 30 s), and the y axis has 10 % to spare; both are
        recomputed only when the data leaves them or fills under half of the
        y range. Between steps a frame only redraws the lines.
        """
        columns = max(16, int(self.axes.bbox.width))
        key = (self.samples.total, columns)
        if self._artists_at == key:
            return
        self._artists_at = key
        first, last = self.samples.first_time, self.samples.last_time
        if self.samples.total:
            left, right = self._xlim
            if left != first or right < last + self.interval:
                headroom = max(0.1 * (last - first), 60 * self.interval, 30.0)
                self._xlim = (first, last + headroom)
                self.axes.set_xlim(first / SECONDS_PER_DAY, (last + headroom) / SECONDS_PER_DAY)
                self.background_stale = True
        x, y = (
            self.samples.decimate(columns, *self._xlim)
            if self.samples.total
            else (
                np.empty(0),
                np.empty((0, len(self.lines))),
            )
        )
        xd = x / SECONDS_PER_DAY  # matplotlib dates: days since 1970 (its default epoch)
        self.line_x, self.line_y = xd, y
        for i, line in enumerate(self.lines):
            line.set_data(xd, y[:, i])
        self.frames += 1
        finite = y[np.isfinite(y)]
        if finite.size:
            lo, hi = float(finite.min()), float(finite.max())
            ylo, yhi = self._ylim
            if lo < ylo or hi > yhi or (hi > lo and (hi - lo) < 0.4 * (yhi - ylo)):
                pad = (hi - lo) * 0.1 if hi > lo else max(abs(hi) * 0.05, 0.5)
                self._ylim = (lo - pad, hi + pad)
                self.axes.set_ylim(*self._ylim)
                self.background_stale = True

    def status(self) -> dict:
        """What the plot holds, for people and tests (``/status.json``)."""
        finite = [
            None if np.isnan(t) else t for t in (self.samples.first_time, self.samples.last_time)
        ]
        return {
            "title": self.title,
            "labels": self.labels,
            "pvs": self.pv_names,
            "polled": sorted(self.monitors.polled) if self.monitors else [],
            "run_number": self.run_number,
            "samples": self.samples.total,
            "first_time": finite[0],
            "last_time": finite[1],
            "latest": [None if np.isnan(v) else v for v in self._latest],
            "interval": self.interval,
            "data_file": str(self.data_file) if self.data_file else None,
            "clients": len(self.manager.web_sockets),
            "frames": self.frames,
            "full_frames": self.full_frames,
        }

    def snapshot(self, fmt: str = "png") -> bytes:
        """The figure as an image file (on the loop: an HTTP handler calls it)."""
        self._artists_at = None
        self._update_artists()
        buffer = BytesIO()
        self.figure.savefig(buffer, format=fmt)
        return buffer.getvalue()
