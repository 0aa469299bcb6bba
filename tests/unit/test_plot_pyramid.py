"""The min/max pyramid: bounded memory, every sample represented, decimation to pixel columns."""

from __future__ import annotations

import numpy as np
import pytest

from bgrscrpt_ioc.plot.pyramid import MinMaxPyramid


def brute_columns(t, v, columns):
    """Per-column min/max of all samples, the way decimate() bins them (by time)."""
    edges = np.linspace(t[0], t[-1], columns + 1)
    starts = np.unique(np.searchsorted(t, edges[:-1], side="left"))
    starts = starts[starts < len(t)]
    bounds = list(starts) + [len(t)]
    pairs = zip(bounds[:-1], bounds[1:], strict=True)
    return [(np.nanmin(v[a:b]), np.nanmax(v[a:b])) for a, b in pairs]


def test_few_samples_come_back_unchanged():
    p = MinMaxPyramid(2, capacity=16)
    for i in range(5):
        p.append(100.0 + i, [i, -i])
    x, y = p.decimate(100)
    assert list(x) == [100.0, 101.0, 102.0, 103.0, 104.0]
    assert y[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert y[:, 1].tolist() == [0, -1, -2, -3, -4]


def test_empty_pyramid_draws_nothing():
    x, y = MinMaxPyramid(3).decimate(500)
    assert x.shape == (0,) and y.shape == (0, 3)


@pytest.mark.parametrize("n", [1000, 4095, 4096, 50_001])
def test_every_extreme_survives_decimation(n):
    rng = np.random.default_rng(n)
    t = np.arange(n, dtype=float)
    v = rng.normal(size=n)
    v[n // 3] = 50.0  # one spike, somewhere in the middle
    v[-1] = -40.0  # and one in the newest sample, not yet paired up at any level
    p = MinMaxPyramid(1, capacity=256)
    p.extend(t[: n // 2], v[: n // 2, None])
    for i in range(n // 2, n):  # the rest one by one, as a live plot gets them
        p.append(t[i], [v[i]])
    x, y = p.decimate(40)
    assert len(x) <= 2 * 40 * 2
    assert np.nanmax(y) == 50.0
    assert np.nanmin(y) == -40.0
    assert x[0] == 0.0  # the whole history, from the first sample


def test_decimation_matches_brute_force_when_levels_align():
    n, columns = 1 << 14, 64
    t = np.arange(n, dtype=float)
    v = np.sin(t / 300.0) + (t % 17) / 10
    p = MinMaxPyramid(1, capacity=1 << 12)
    p.extend(t, v[:, None])
    x, y = p.decimate(columns)
    expected = brute_columns(t, v, columns)
    got = list(zip(y[0::2, 0], y[1::2, 0], strict=True))
    # Columns are built from whole buckets, so an edge may move by less than a bucket;
    # the overall range and the number of columns must match exactly.
    assert len(got) == len(expected)
    assert min(a for a, _ in got) == min(a for a, _ in expected)
    assert max(b for _, b in got) == max(b for _, b in expected)


def test_memory_is_fixed_and_history_is_kept_however_long():
    p = MinMaxPyramid(3, capacity=1024)
    before = p.nbytes
    step = 100_000
    for start in range(0, 3_000_000, step):  # far more samples than any one ring holds
        t = np.arange(start, start + step, dtype=float) * 0.1
        p.extend(t, np.stack([t, -t, np.zeros_like(t)], axis=1))
    assert p.nbytes == before
    x, y = p.decimate(500)
    assert x[0] == 0.0 and p.first_time == 0.0
    assert np.nanmax(y[:, 0]) == pytest.approx(299_999.9)
    assert np.nanmin(y[:, 1]) == pytest.approx(-299_999.9)
    assert len(x) <= 2 * 500


def test_gaps_are_nan_and_do_not_hide_values():
    p = MinMaxPyramid(2, capacity=64)
    for i in range(20):
        p.append(float(i), [np.nan if 5 <= i < 15 else float(i), np.nan])
    x, y = p.decimate(100)  # fewer samples than columns: raw, gaps kept
    assert np.isnan(y[5:15, 0]).all() and not np.isnan(y[:5, 0]).any()
    assert np.isnan(y[:, 1]).all()  # a block never seen is all gap
    big = MinMaxPyramid(1, capacity=64)
    t = np.arange(10_000, dtype=float)
    v = np.where((t > 4000) & (t < 6000), np.nan, 1.0)
    big.extend(t, v[:, None])
    _, y = big.decimate(50)
    assert np.isnan(y).any()  # a long gap shows as a break
    assert np.nanmax(y) == 1.0


def test_clear_starts_afresh():
    p = MinMaxPyramid(1, capacity=32)
    p.extend(np.arange(1000.0), np.ones((1000, 1)))
    p.clear()
    assert p.total == 0
    p.append(5000.0, [7.0])
    x, y = p.decimate(10)
    assert x.tolist() == [5000.0] and y.tolist() == [[7.0]]


def test_frame_cost_does_not_grow_with_history():
    """The entries reduced per frame are bounded by the pixel width, not the sample count."""
    small, large = MinMaxPyramid(3), MinMaxPyramid(3)
    small.extend(np.arange(36_000.0), np.zeros((36_000, 3)))
    large.extend(np.arange(6_048_000.0), np.zeros((6_048_000, 3)))
    for p in (small, large):
        t, _, _ = p._entries_covering_all(4 * 800)
        assert len(t) <= 4 * 800 + 30
