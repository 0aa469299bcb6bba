"""PNG frames for WebAgg's browsers, encoded for speed rather than size.

A live frame differs from the one before in a narrow strip. ``png_sparse``
writes such a frame without compressing anything per frame: the strip's rows go
in as stored deflate blocks and the zeros around them as runs compressed once.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np


def _png(width: int, height: int, zdata: bytes) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA, no interlace
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zdata) + chunk(b"IEND", b"")


def png_rgba(rgba: np.ndarray, level: int = 1) -> bytes:
    """Encode an (h, w, 4) uint8 array as PNG: no row filters, zlib at ``level``."""
    height, width = rgba.shape[:2]
    rows = np.zeros((height, 1 + 4 * width), dtype=np.uint8)  # filter byte 0 per row
    rows[:, 1:] = rgba.reshape(height, 4 * width)
    return _png(width, height, zlib.compress(rows.tobytes(), level))


_ADLER_MOD = 65521
_ZERO_CHUNKS: list[bytes] = []  # [k]: 2**k zero bytes as raw deflate, byte-aligned, not final
_ZERO_CHUNK_BITS = 21


def _deflated_zeros(n: int) -> bytes:
    """``n`` zero bytes as raw deflate blocks ending on a byte boundary (not final),
    put together from cached runs of 2**k zeros: no compression per frame."""
    if not _ZERO_CHUNKS:
        for k in range(_ZERO_CHUNK_BITS):
            compressor = zlib.compressobj(1, zlib.DEFLATED, -15)
            _ZERO_CHUNKS.append(
                compressor.compress(bytes(1 << k)) + compressor.flush(zlib.Z_FULL_FLUSH)
            )
    big, rest = divmod(n, 1 << (_ZERO_CHUNK_BITS - 1))
    parts = [_ZERO_CHUNKS[-1]] * big
    parts += [_ZERO_CHUNKS[k] for k in range(rest.bit_length()) if rest >> k & 1]
    return b"".join(parts)


def png_sparse(width: int, height: int, block: np.ndarray, top: int, left: int) -> bytes:
    """PNG of a ``width`` x ``height`` RGBA image that is zero except ``block`` (h, w, 4
    uint8) at (``top``, ``left``): the block's rows go in as stored deflate blocks,
    the zeros between them as cached compressed runs, so the cost follows the block."""
    bh, bw = block.shape[:2]
    row_bytes = 1 + 4 * width  # each PNG row starts with its filter byte (0, "None")
    total = height * row_bytes
    if bh == 0 or bw == 0:
        body = _deflated_zeros(total)
        a, b = 1, total % _ADLER_MOD
    else:
        n = 4 * bw
        before = top * row_bytes + 1 + 4 * left  # zeros before the first strip
        after = total - (before + (bh - 1) * row_bytes + n)  # zeros after the last one
        gap = _deflated_zeros(row_bytes - n)  # the zeros from one strip to the next
        # Every row of the block: a stored-block header, its bytes, then the gap.
        rows = np.empty((bh, 5 + n + len(gap)), dtype=np.uint8)
        rows[:, :5] = np.frombuffer(b"\x00" + struct.pack("<HH", n, n ^ 0xFFFF), np.uint8)
        rows[:, 5 : 5 + n] = block.reshape(bh, n)
        rows[:, 5 + n :] = np.frombuffer(gap, np.uint8)
        body = _deflated_zeros(before) + rows.tobytes()[: -len(gap)] + _deflated_zeros(after)
        # Adler-32 of the whole image, where only the block is not zero:
        # A = 1 + sum(d), B = total + sum((total - position) * d), both mod 65521.
        data = block.reshape(bh, n).astype(np.int64)
        position = before + np.arange(bh)[:, None] * row_bytes + np.arange(n)[None, :]
        a = int(1 + data.sum()) % _ADLER_MOD
        b = int(total + ((total - position) * data).sum()) % _ADLER_MOD
    zdata = b"\x78\x01" + body + b"\x03\x00" + struct.pack(">I", (b << 16) | a)
    return _png(width, height, zdata)
