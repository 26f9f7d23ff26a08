"""The one-pass window + box reduction is Pillow's ``Image.reduce`` of the windowed image; the
bilinear resize is Pillow's two one-axis resizes."""

import numpy as np
import pydicom
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from helpers import pillow_bilinear
from medgrounder.data.vindr import resample
from medgrounder.data.vindr.dicom import _linear_window, _Stats, _table
from medgrounder.data.vindr.resample import (
    LinearWindow,
    bilinear,
    box_reduce,
    linear_matches,
    window_reduce,
)

RNG = np.random.default_rng(7)


def pillow_reduce(table, src, kx, ky, mask):
    codes = src.view(f"u{src.dtype.itemsize}") & mask
    return np.asarray(Image.fromarray(table[codes]).reduce((kx, ky)))


@pytest.mark.parametrize("dtype, mask", [(np.uint16, 0xFFFF), (np.uint16, 0x0FFF), (np.int16, 0xFFFF),
                                         (np.uint8, 0xFF), (np.int8, 0x7F)])
def test_matches_pillow_on_every_shape_and_factor(dtype, mask):
    info = np.iinfo(dtype)
    table = RNG.integers(0, 256, 1 << (8 * np.dtype(dtype).itemsize), dtype=np.uint8)
    for h in range(1, 23, 3):
        for w in range(1, 23, 4):
            src = RNG.integers(info.min, info.max, (h, w), endpoint=True).astype(dtype)
            for kx in (1, 2, 3, 5, 8):
                for ky in (1, 2, 4, 7):
                    got = window_reduce(table[:mask + 1].copy(), src, kx, ky, mask)
                    np.testing.assert_array_equal(got, pillow_reduce(table, src, kx, ky, mask), err_msg=str((h, w, kx, ky)))


def test_large_boxes_and_strided_input():
    """Boxes wider than the unrolled sums (kx > 8), and a non-contiguous view."""
    table = np.full(4096, 255, np.uint8)
    table[::3] = 0
    src = RNG.integers(0, 4096, (600, 530), dtype=np.uint16)[::2, ::1]
    for k in (16, 64, 100):
        np.testing.assert_array_equal(window_reduce(table, src, k, k, 0xFFF), pillow_reduce(table, src, k, k, 0xFFF))


def test_multipliers_are_pillows():
    """``((sum + n // 2) * multiplier(n)) >> 24`` is Pillow's value for a box of n pixels."""
    assert resample._multiplier(1) == 1 << 24
    for kx, ky in [(1, 1), (2, 1), (3, 3), (5, 6), (16, 16), (40, 25), (300, 200)]:
        n = kx * ky
        for box in (np.zeros((ky, kx)), np.full((ky, kx), 255), RNG.integers(0, 256, (ky, kx)),
                    RNG.integers(127, 129, (ky, kx))):
            box = box.astype(np.uint8)
            want = np.asarray(Image.fromarray(box).reduce((kx, ky)))[0, 0]
            assert (int(box.sum()) + n // 2) * int(resample._multiplier(n)) >> 24 == want, (kx, ky)


def test_bad_arguments_are_named():
    table = np.zeros(4096, np.uint8)
    with pytest.raises(ValueError, match="2-D 8- or 16-bit"):
        window_reduce(table, np.zeros((2, 2), np.float32), 2, 2)
    with pytest.raises(ValueError, match="positive"):
        window_reduce(table, np.zeros((2, 2), np.uint16), 0, 2, 0xFFF)
    with pytest.raises(ValueError, match="2\\*\\*24"):
        window_reduce(table, np.zeros((2, 2), np.uint16), 4096, 4096, 0xFFF)
    with pytest.raises(ValueError, match="at least 65536 entries"):
        window_reduce(table, np.zeros((2, 2), np.uint16), 2, 2)


def _linear_dataset(center, width, slope, intercept, mono1, exact):
    ds = pydicom.Dataset()
    ds.WindowCenter, ds.WindowWidth = f"{center:.3f}", f"{width:.3f}"
    ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.4f}", f"{intercept:.1f}"
    ds.PhotometricInterpretation = "MONOCHROME1" if mono1 else "MONOCHROME2"
    if exact:
        ds.VOILUTFunction = "LINEAR_EXACT"
    return ds


@settings(max_examples=60, deadline=None)
@given(center=st.floats(-2000, 70000), width=st.floats(1.5, 80000), slope=st.sampled_from([1.0, 0.5, 2.0, 1.7321]),
       intercept=st.sampled_from([0.0, -1024.0, 333.3]), mono1=st.booleans(), exact=st.booleans())
def test_linear_arithmetic_is_the_table_on_every_code(center, width, slope, intercept, mono1, exact):
    """The arithmetic repeats the float32 operations that built the table, so it gives every one
    of the 65,536 entries (all codes are checked)."""
    ds = _linear_dataset(center, width, slope, intercept, mono1, exact)
    codes = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    linear, scope = _linear_window(ds, codes, "dicom", _Stats(codes))
    assert scope is None
    assert linear_matches(linear, _table(ds, codes, "dicom"))


def test_min_max_arithmetic_is_checked_on_the_image_codes_only():
    ds = pydicom.Dataset()
    ds.PhotometricInterpretation = "MONOCHROME2"
    img = RNG.integers(1000, 3000, (40, 50), dtype=np.uint16)
    stats = _Stats(img)
    linear, scope = _linear_window(ds, img, "dicom", stats)
    table = _table(ds, img, "dicom", stats=stats)
    assert scope == (img.min(), img.max()) and linear_matches(linear, table, scope)
    assert not linear_matches(linear, table)  # outside the image's codes the table is not clipped
    np.testing.assert_array_equal(window_reduce(table, img, 3, 3, linear=linear, codes=scope),
                                  pillow_reduce(table, img, 3, 3, 0xFFFF))


def test_a_linear_window_that_misses_the_table_falls_back(monkeypatch):
    table = RNG.integers(0, 256, 4096, dtype=np.uint8)
    src = RNG.integers(0, 4096, (30, 31), dtype=np.uint16)
    wrong = LinearWindow(*np.array([1, 0, 2000, 1000, 1, 0.5, 1, 0], np.float32))
    assert not linear_matches(wrong, table)
    by_linear = []
    real = resample._reduce
    monkeypatch.setattr(resample, "_reduce", lambda t, lin, use, *a: by_linear.append(use) or real(t, lin, use, *a))
    np.testing.assert_array_equal(window_reduce(table, src, 4, 4, 0xFFF, wrong), pillow_reduce(table, src, 4, 4, 0xFFF))
    assert by_linear == [False]


def test_bilinear_is_pillows_two_passes():
    """Down and up, square and not, whole images and boxes with fractional edges."""
    for _ in range(400):
        h, w = RNG.integers(2, 200, 2)
        width, height = (int(v) for v in RNG.integers(1, 160, 2))
        img = RNG.integers(0, 256, (h, w), dtype=np.uint8)
        x0, y0 = (RNG.uniform(0, w / 3), RNG.uniform(0, h / 3)) if RNG.random() < 0.3 else (0.0, 0.0)
        box = (x0, y0, w - RNG.uniform(0, 0.99) if RNG.random() < 0.5 else float(w),
               h - RNG.uniform(0, 0.99) if RNG.random() < 0.5 else float(h))
        np.testing.assert_array_equal(bilinear(img, width, height, box), pillow_bilinear(img, width, height, box),
                                      err_msg=str((h, w, width, height, box)))


def test_bilinear_at_the_cache_scale_and_identity():
    """A film's box means (5 x 5 boxes of 2,650 x 2,900) to 448: within one grey level of
    Pillow's own two-axis resize, whichever pass it runs first; the same size is a copy."""
    img = RNG.integers(0, 256, (580, 530), dtype=np.uint8)
    box = (0, 0, 2650 / 5, 2900 / 5)
    got = bilinear(img, 448, 448, box)
    np.testing.assert_array_equal(got, pillow_bilinear(img, 448, 448, box))
    assert np.abs(got.astype(int) - np.asarray(Image.fromarray(img).resize((448, 448), Image.BILINEAR, box=box))).max() <= 1
    np.testing.assert_array_equal(bilinear(img, 530, 580), img)
    np.testing.assert_array_equal(box_reduce(img, 3, 2), np.asarray(Image.fromarray(img).reduce((3, 2))))


def test_bilinear_bad_arguments():
    img = np.zeros((4, 5), np.uint8)
    with pytest.raises(ValueError, match="2-D uint8"):
        bilinear(img.astype(np.uint16), 2, 2)
    with pytest.raises(ValueError, match="positive"):
        bilinear(img, 0, 2)
    with pytest.raises(ValueError, match="empty or outside"):
        bilinear(img, 2, 2, (3, 0, 3, 4))
