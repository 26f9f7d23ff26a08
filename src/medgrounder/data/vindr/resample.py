"""The cache image of a radiograph, fast and bit for bit defined: window and box-reduce in one
pass, then a bilinear resize.

:func:`window_reduce` gives the 8-bit value of every stored pixel summed over integer boxes,
without the full-size 8-bit image in between. The result is Pillow's ``Image.reduce((kx, ky))``
of the windowed image, bit for bit: the same boxes (the last row and column keep what is left)
and Pillow's fixed-point rounding, ``((sum + count // 2) * multiplier(count)) >> 24``
(``libImaging/Reduce.c``). Windowing every pixel before averaging is what makes it exact; one
pass over the stored values, instead of a gather, a full-size 8-bit image and a second pass, is
what makes it fast (``bench/bench_prepare.py``).

A pixel's 8-bit value comes from the window table of :mod:`medgrounder.data.vindr.dicom` (one entry
per stored code), or, for a linear window (the standard's, ``LINEAR_EXACT``, or the data's
min..max), from the same float32 arithmetic that built the table (:class:`LinearWindow`):
vectorised, and with no 64 KiB table competing for the cache on 16-bit images. The arithmetic
is used only after it has given every table entry the image can use.

:func:`bilinear` is Pillow's bilinear filter (``libImaging/Resample.c``: triangle weights over
the box's support, normalised, 22-bit fixed point), horizontal pass first, each pass rounded to
8 bits: Pillow's two one-axis resizes, bit for bit, about 4x faster (the horizontal pass runs
as a vertical one on the transposed image, so both vectorise). Pillow's own two-axis resize
takes the same passes in that order up to version 12; version 13 runs the vertical pass first
when it is the cheaper, which moves a few pixels by one grey level.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

_ROUND = np.float32(2.0**23)  # (y + 2**23) - 2**23 rounds half to even, as np.rint, for 0 <= y < 2**22


class LinearWindow(NamedTuple):
    """A linear window as :func:`medgrounder.data.vindr.dicom._window_dicom` evaluates it, in float32:
    ``y = clip(((code * slope + intercept) - offset) / divisor * scale + shift, 0, 1)``, then
    ``round((y * flip_scale + flip_offset) * 255)`` (``-1, 1`` for MONOCHROME1, else ``1, 0``).
    Factors of 1 and terms of 0 stand for the operations numpy skips: they change no bits."""

    slope: np.float32
    intercept: np.float32
    offset: np.float32
    divisor: np.float32
    scale: np.float32
    shift: np.float32
    flip_scale: np.float32
    flip_offset: np.float32


_NO_LINEAR = LinearWindow(*np.zeros(8, np.float32))
_IDENTITY = np.arange(256, dtype=np.uint8)


@njit(inline="always", error_model="numpy")
def _by_linear(code, linear):  # pragma: no cover - compiled
    # Each operation is one float32 operation of the numpy code, in its order: the same bits.
    slope, intercept, offset, divisor, scale, shift, flip_scale, flip_offset = linear
    x = np.float32(np.int32(code)) * slope + intercept
    y = (x - offset) / divisor * scale + shift
    y = min(max(y, np.float32(0)), np.float32(1))
    y = (y * flip_scale + flip_offset) * np.float32(255)
    return np.uint32(np.int32((y + _ROUND) - _ROUND))


@njit(inline="always", error_model="numpy")
def _multiplier(n):  # pragma: no cover - compiled
    # Reduce.c's division_UINT32: (UINT32)((float)(1 << 32) / (float)(256 * n)).
    return np.uint32(np.float32(4294967296.0) / np.float32(256 * n))


@njit(cache=True, nogil=True, error_model="numpy")
def _reduce(table, linear, by_linear, src, mask, kx, ky):  # pragma: no cover - compiled
    h, w = src.shape
    hk, wk = (h + ky - 1) // ky, (w + kx - 1) // kx
    wf = w // kx  # whole boxes per row of boxes
    out = np.empty((hk, wk), np.uint8)
    # A row of boxes summed down its rows, per column; 8 spare zeros for the unrolled box sums.
    cols = np.zeros(w + 8, np.uint32)
    m = src.dtype.type(mask)
    for by in range(hk):
        y0 = by * ky
        y1 = min(y0 + ky, h)
        if by_linear:  # a branch per row of boxes: each inner loop stays simple (and vectorised)
            row = src[y0]
            for x in range(w):
                cols[x] = _by_linear(row[x] & m, linear)
            for y in range(y0 + 1, y1):
                row = src[y]
                for x in range(w):
                    cols[x] += _by_linear(row[x] & m, linear)
        else:
            row = src[y0]
            for x in range(w):
                cols[x] = table[row[x] & m]
            for y in range(y0 + 1, y1):
                row = src[y]
                for x in range(w):
                    cols[x] += table[row[x] & m]
        n = (y1 - y0) * kx
        half, mult = np.uint32(n // 2), _multiplier(n)
        o = out[by]
        if kx <= 8:  # 8 terms, unrolled, those past kx zeroed: ~3x faster than a loop of kx
            for bx in range(wf):
                s = half
                x0 = bx * kx
                for k in range(8):
                    s += cols[x0 + k] if k < kx else np.uint32(0)
                o[bx] = (s * mult) >> 24
        else:
            for bx in range(wf):
                s = half
                x0 = bx * kx
                for k in range(kx):
                    s += cols[x0 + k]
                o[bx] = (s * mult) >> 24
        if wk > wf:  # the partial box at the right edge
            n = (y1 - y0) * (w - wf * kx)
            s = np.uint32(n // 2)
            for x in range(wf * kx, w):
                s += cols[x]
            o[wf] = (s * _multiplier(n)) >> 24
    return out


@njit(cache=True, nogil=True, error_model="numpy")
def _linear_codes(linear, first, last):  # pragma: no cover - compiled
    out = np.empty(last + 1 - first, np.uint32)
    for code in range(first, last + 1):
        out[code - first] = _by_linear(code, linear)
    return out


def linear_matches(linear: LinearWindow, table: np.ndarray, codes: tuple[int, int] | None = None) -> bool:
    """Whether ``linear`` gives ``table[code]`` for every code from ``codes[0]`` to ``codes[1]``
    (default: the whole table)."""
    first, last = codes or (0, table.size - 1)
    return bool(np.array_equal(_linear_codes(linear, first, last), table[first:last + 1]))


def box_reduce(img: np.ndarray, kx: int, ky: int) -> np.ndarray:
    """``np.asarray(Image.fromarray(img).reduce((kx, ky)))`` of a 2-D ``uint8`` image."""
    return window_reduce(_IDENTITY, img, kx, ky)


def window_reduce(table: np.ndarray, src: np.ndarray, kx: int, ky: int, mask: int | None = None,
                  linear: LinearWindow | None = None, codes: tuple[int, int] | None = None) -> np.ndarray:
    """``[H, W]`` stored values -> ``uint8 [ceil(H / ky), ceil(W / kx)]``, equal to
    ``np.asarray(Image.fromarray(table[codes & mask]).reduce((kx, ky)))``.

    ``src`` is 8- or 16-bit; its ``codes`` are its bytes read as native unsigned integers (a
    signed or byte-swapped value is looked up by that code, as :mod:`medgrounder.data.vindr.dicom`
    builds its tables). ``table`` (``uint8``) has an entry for every code ``codes & mask`` can
    take: ``2 ** bits`` without a ``mask``, ``mask + 1`` with one. Boxes of ``2 ** 24`` pixels
    or more are refused (Pillow's multiplier overflows there).

    With ``linear`` and native unsigned ``src``, pixels are windowed by its arithmetic when it
    reproduces the table (:func:`linear_matches`) on every code, or on ``codes`` (first, last),
    which must then hold all of ``src & mask``; else by the table.
    """
    if src.ndim != 2 or src.dtype.itemsize not in (1, 2) or src.dtype.kind not in "ui":
        raise ValueError(f"expected a 2-D 8- or 16-bit integer image, got {src.dtype} {src.shape}")
    if not (kx >= 1 and ky >= 1 and kx * ky < 1 << 24):
        raise ValueError(f"box factors must be positive, with fewer than 2**24 pixels a box; got {(kx, ky)}")
    full = (1 << (8 * src.dtype.itemsize)) - 1
    mask = full if mask is None else mask & full
    if table.dtype != np.uint8 or table.ndim != 1 or table.size <= mask:
        raise ValueError(f"table must be uint8 with at least {mask + 1} entries, got {table.dtype} {table.shape}")
    unsigned = src.view(f"u{src.dtype.itemsize}")
    # The arithmetic reads a code as a native unsigned value; other codes take the table.
    if (linear is not None and src.dtype.kind == "u" and src.dtype.isnative
            and linear_matches(linear := LinearWindow(*map(np.float32, linear)), table[:mask + 1], codes)):
        return _reduce(table, linear, True, unsigned, mask, kx, ky)
    return _reduce(table, _NO_LINEAR, False, unsigned, mask, kx, ky)


_PRECISION = 22  # Resample.c: 32 - 8 - 2 bits for the weights


@njit(cache=True, nogil=True, error_model="numpy")
def _bilinear_weights(in_size, in0, in1, out_size):  # pragma: no cover - compiled
    """Resample.c's ``precompute_coeffs`` (bilinear) and ``normalize_coeffs_8bpc``, in its double
    operations: ``(weights int32 [out, taps], first input index [out], taps used [out])``;
    ``in0`` and ``in1`` arrive as float32, as C's ``float box[4]``."""
    scale = np.float64(in1 - in0) / out_size
    filterscale = max(scale, 1.0)
    support = filterscale  # the triangle's support is 1
    taps = int(np.ceil(support)) * 2 + 1
    weights = np.zeros((out_size, taps), np.int32)
    first = np.empty(out_size, np.int64)
    count = np.empty(out_size, np.int64)
    w = np.empty(taps, np.float64)
    inv = 1.0 / filterscale
    for xx in range(out_size):
        center = in0 + (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        n = min(int(center + support + 0.5), in_size) - xmin
        total = 0.0
        for x in range(n):
            t = abs((x + xmin - center + 0.5) * inv)
            w[x] = 1.0 - t if t < 1.0 else 0.0
            total += w[x]
        for x in range(n):
            v = w[x] / total if total != 0.0 else w[x]
            weights[xx, x] = int(v * (1 << _PRECISION) + 0.5)  # v >= 0: Pillow's positive branch
        first[xx], count[xx] = xmin, n
    return weights, first, count


@njit(cache=True, nogil=True, error_model="numpy")
def _weighted_rows(src, weights, first, count, out):  # pragma: no cover - compiled
    """``out[i] = clip8(sum_t weights[i, t] * src[first[i] + t])``, a whole row at a time."""
    acc = np.empty(src.shape[1], np.int32)
    for i in range(out.shape[0]):
        acc[:] = 1 << (_PRECISION - 1)
        for t in range(count[i]):
            k = weights[i, t]
            row = src[first[i] + t]
            for j in range(acc.size):
                acc[j] += np.int32(row[j]) * k
        o = out[i]
        for j in range(acc.size):
            o[j] = min(max(acc[j] >> _PRECISION, 0), 255)


@njit(cache=True, nogil=True, error_model="numpy")
def _bilinear(img, width, height, x0, y0, x1, y1):  # pragma: no cover - compiled
    h, w = img.shape
    kv, fv, nv = _bilinear_weights(h, y0, y1, height)
    kh, fh, nh = _bilinear_weights(w, x0, x1, width)
    top, bottom = fv[0], fv[height - 1] + nv[height - 1]  # the input rows the vertical pass reads
    across = np.empty((width, bottom - top), np.uint8)  # horizontal pass, transposed
    _weighted_rows(np.ascontiguousarray(img[top:bottom].T), kh, fh, nh, across)
    out = np.empty((height, width), np.uint8)
    _weighted_rows(np.ascontiguousarray(across.T), kv, fv - top, nv, out)
    return out


def bilinear(img: np.ndarray, width: int, height: int, box: tuple[float, float, float, float] | None = None
             ) -> np.ndarray:
    """``uint8 [H, W]`` -> ``uint8 [height, width]``, the region ``box = (x0, y0, x1, y1)``
    (default: all of it) by Pillow's bilinear filter: equal to
    ``Image.resize((width, H), BILINEAR, box=(x0, 0, x1, H))`` then
    ``.resize((width, height), BILINEAR, box=(0, y0, width, y1))`` (module docstring)."""
    if img.ndim != 2 or img.dtype != np.uint8 or 0 in img.shape:
        raise ValueError(f"expected a non-empty 2-D uint8 image, got {img.dtype} {img.shape}")
    if width < 1 or height < 1:
        raise ValueError(f"size must be positive, got {(width, height)}")
    x0, y0, x1, y1 = np.float32(box or (0, 0, img.shape[1], img.shape[0]))
    if not (0 <= x0 < x1 <= img.shape[1] and 0 <= y0 < y1 <= img.shape[0]):
        raise ValueError(f"box {box} is empty or outside the {img.shape[1]} x {img.shape[0]} image")
    return _bilinear(img, width, height, x0, y0, x1, y1)
