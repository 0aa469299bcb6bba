"""Samples kept for drawing: a min/max pyramid of fixed-size numpy ring buffers.

Level 0 holds the last ``capacity`` samples. Level k holds the last
``capacity`` buckets of 2**k consecutive samples, each as (time of its first
sample, min and max of every series). Appending is amortised O(1) (a binary
counter: each level pairs up what the level below completed), memory is fixed
when the object is made, and the whole history, however long, is always
represented at some level. Drawing picks the finest level that still holds
everything and that gives at most a few entries per pixel column, then reduces
that to one min and one max per column: the cost of a frame depends on the
pixel width, not on how long the plot has run.

NaN is a gap (a block disconnected or INVALID): minima and maxima ignore it,
and a column with nothing but gaps stays NaN, which matplotlib draws as a
break in the line.
"""

from __future__ import annotations

import numpy as np

DEFAULT_CAPACITY = 8192
DEFAULT_LEVELS = 24  # 8192 * 2**23 samples: over two thousand years at 10 Hz


class _Ring:
    """One level: ``capacity`` entries of (t, min[series], max[series]), oldest overwritten."""

    __slots__ = ("capacity", "count", "head", "maxs", "mins", "times")

    def __init__(self, capacity: int, series: int):
        self.capacity = capacity
        # Filled now, not lazily: the memory a plot needs is all taken at its start,
        # so the process's size stays flat however long it runs.
        self.times = np.full(capacity, np.nan)
        self.mins = np.full((capacity, series), np.nan)
        self.maxs = np.full((capacity, series), np.nan)
        self.head = 0  # where the next entry goes
        self.count = 0  # entries held (<= capacity)

    def extend(self, t: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        n = len(t)
        if n >= self.capacity:  # only the newest fit
            t, lo, hi = t[-self.capacity :], lo[-self.capacity :], hi[-self.capacity :]
            n = self.capacity
        first = min(n, self.capacity - self.head)
        self.times[self.head : self.head + first] = t[:first]
        self.mins[self.head : self.head + first] = lo[:first]
        self.maxs[self.head : self.head + first] = hi[:first]
        rest = n - first
        if rest:
            self.times[:rest] = t[first:]
            self.mins[:rest] = lo[first:]
            self.maxs[:rest] = hi[first:]
        self.head = (self.head + n) % self.capacity
        self.count = min(self.capacity, self.count + n)

    def ordered(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The entries held, oldest first (copies only when the ring has wrapped)."""
        if self.count < self.capacity:
            return self.times[: self.count], self.mins[: self.count], self.maxs[: self.count]
        h = self.head
        if h == 0:
            return self.times, self.mins, self.maxs
        return (
            np.concatenate((self.times[h:], self.times[:h])),
            np.concatenate((self.mins[h:], self.mins[:h])),
            np.concatenate((self.maxs[h:], self.maxs[:h])),
        )

    def clear(self) -> None:
        self.head = 0
        self.count = 0


class MinMaxPyramid:
    """Timestamped samples of ``series`` values, bounded in memory, drawn at pixel width."""

    def __init__(self, series: int, capacity: int = DEFAULT_CAPACITY, levels: int = DEFAULT_LEVELS):
        if series < 1 or capacity < 4 or levels < 1:
            raise ValueError("need at least one series, a capacity of 4 and one level")
        self.series = series
        self.capacity = capacity
        self._levels = [_Ring(capacity, series) for _ in range(levels)]
        # carry[k]: a completed level-k entry still waiting for its partner, or None.
        self._carry: list[tuple[np.ndarray, np.ndarray, np.ndarray] | None] = [None] * levels
        self.total = 0  # samples appended since the last clear
        self.first_time = np.nan
        self.last_time = np.nan

    @property
    def nbytes(self) -> int:
        return sum(r.times.nbytes + r.mins.nbytes + r.maxs.nbytes for r in self._levels)

    def clear(self) -> None:
        """Forget every sample (a new run): memory stays allocated."""
        for ring in self._levels:
            ring.clear()
        self._carry = [None] * len(self._levels)
        self.total = 0
        self.first_time = np.nan
        self.last_time = np.nan

    def append(self, t: float, values) -> None:
        """One sample: wall time ``t`` (seconds) and one value per series (NaN for a gap)."""
        row = np.asarray(values, dtype=np.float64).reshape(1, self.series)
        self.extend(np.array([t], dtype=np.float64), row)

    def extend(self, times, values) -> None:
        """Many samples at once: ``times`` shape (n,), ``values`` shape (n, series)."""
        t = np.asarray(times, dtype=np.float64).reshape(-1)
        v = np.asarray(values, dtype=np.float64).reshape(len(t), self.series)
        if not len(t):
            return
        if self.total == 0:
            self.first_time = float(t[0])
        self.last_time = float(t[-1])
        self.total += len(t)
        self._push(0, t, v, v)

    def _push(self, level: int, t: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> None:
        while len(t):
            self._levels[level].extend(t, lo, hi)
            if level + 1 >= len(self._levels):
                return
            carry = self._carry[level]
            if carry is not None:
                t = np.concatenate((carry[0], t))
                lo = np.concatenate((carry[1], lo))
                hi = np.concatenate((carry[2], hi))
            if len(t) % 2:
                self._carry[level] = (t[-1:], lo[-1:], hi[-1:])
                t, lo, hi = t[:-1], lo[:-1], hi[:-1]
            else:
                self._carry[level] = None
            # Pairs of level-k entries make the level-(k+1) entries.
            t, lo, hi = t[0::2], np.fmin(lo[0::2], lo[1::2]), np.fmax(hi[0::2], hi[1::2])
            level += 1

    def _entries_covering_all(self, most: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Entries, oldest first, that together cover every sample, about ``most`` or fewer."""
        nlevels = len(self._levels)
        level = 0
        while level < nlevels - 1:
            made = self.total >> level  # level-k entries ever made; the ring keeps the last
            if made <= self.capacity and made <= most:
                break
            level += 1
        t, lo, hi = self._levels[level].ordered()
        # The newest samples not yet paired up into this level wait as carries below it.
        tails = [c for c in reversed(self._carry[:level]) if c is not None]
        if tails:
            t = np.concatenate([t, *(c[0] for c in tails)])
            lo = np.concatenate([lo, *(c[1] for c in tails)])
            hi = np.concatenate([hi, *(c[2] for c in tails)])
        return t, lo, hi

    def decimate(
        self, columns: int, start: float | None = None, end: float | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Line data for ``columns`` pixel columns: x (seconds) and y of shape (n, series).

        The columns split ``start``..``end`` (the x axis; by default the data's
        own span), so that between changes of the axis they stay put. With
        fewer samples than columns every sample comes back as it is; otherwise
        each column gives its minimum then its maximum, so every peak stays
        visible while the number of points stays about 2 * columns.
        """
        columns = max(1, int(columns))
        if self.total == 0:
            return np.empty(0), np.empty((0, self.series))
        t, lo, hi = self._entries_covering_all(4 * columns)
        if len(t) <= 2 * columns and np.array_equal(lo, hi, equal_nan=True):
            return t.copy(), lo.copy()
        lo_edge = t[0] if start is None else min(start, t[0])
        hi_edge = t[-1] if end is None else max(end, t[-1])
        edges = np.linspace(lo_edge, hi_edge, columns + 1)
        starts = np.unique(np.searchsorted(t, edges[:-1], side="left"))
        starts = starts[starts < len(t)]
        col_lo = np.fmin.reduceat(lo, starts, axis=0)
        col_hi = np.fmax.reduceat(hi, starts, axis=0)
        x = np.repeat(t[starts], 2)
        y = np.empty((2 * len(starts), self.series))
        y[0::2] = col_lo
        y[1::2] = col_hi
        return x, y
