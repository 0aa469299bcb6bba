"""The PNG frame encoders: what a browser (here Pillow and zlib) decodes is the image."""

from __future__ import annotations

import io
import zlib

import numpy as np
import pytest
from PIL import Image

from bgrscrpt_ioc.plot.png import _deflated_zeros, png_rgba, png_sparse


def decode(png: bytes) -> np.ndarray:
    # zlib checks the stream's Adler-32 as a strict reader would.
    idat = png.index(b"IDAT")
    length = int.from_bytes(png[idat - 4 : idat], "big")
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert len(zlib.decompress(png[idat + 4 : idat + 4 + length])) == height * (1 + 4 * width)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))


@pytest.mark.parametrize(
    "width, height, top, left, rows, cols",
    [
        (53, 37, 5, 7, 10, 3),
        (53, 37, 0, 0, 37, 53),
        (800, 500, 100, 600, 300, 12),
        (9, 9, 8, 8, 1, 1),
    ],
)
def test_sparse_frames_decode_to_the_block_on_zeros(width, height, top, left, rows, cols):
    block = np.random.default_rng(width).integers(0, 256, (rows, cols, 4), dtype=np.uint8)
    expected = np.zeros((height, width, 4), np.uint8)
    expected[top : top + rows, left : left + cols] = block
    assert np.array_equal(decode(png_sparse(width, height, block, top, left)), expected)


def test_an_empty_diff_is_all_zero():
    png = png_sparse(20, 10, np.empty((0, 0, 4), np.uint8), 0, 0)
    assert not decode(png).any()


def test_full_frames_decode_exactly():
    image = np.random.default_rng(1).integers(0, 256, (31, 17, 4), dtype=np.uint8)
    assert np.array_equal(decode(png_rgba(image)), image)


@pytest.mark.parametrize("n", [0, 1, 7, 65536, 1_234_567, 5_000_000])
def test_zero_runs_inflate_to_zeros(n):
    inflater = zlib.decompressobj(-15)
    assert inflater.decompress(_deflated_zeros(n) + b"\x03\x00") == bytes(n)
    assert inflater.eof  # the runs end on a byte boundary, ready for the final block
