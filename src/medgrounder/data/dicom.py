"""Read a DICOM radiograph into a 2-D ``uint8`` array at its original size.

Two windowings:

- ``"dicom"`` (default) follows the DICOM display pipeline: modality LUT (*Rescale Slope /
  Intercept* or a *Modality LUT Sequence*), then VOI: the first *Window Center / Width* with
  the standard's linear function (PS3.3 C.11.2.1.2, ``(x - (c - 0.5)) / (w - 1) + 0.5``;
  ``LINEAR_EXACT`` and ``SIGMOID`` when *VOI LUT Function* says so), else the first *VOI LUT
  Sequence* item (scaled by its entries' range), else the data's own min..max; finally
  ``MONOCHROME1`` is inverted. Float32, rounded to the nearest grey level.
- ``"litegpt"`` reproduces the LiteGPT appendix A.1 code: stored values (no rescale) in
  float64, ``(x - center) / width`` clipped to [-1, 1] (so ``center +- width`` spans the
  output: half the contrast of the standard window), ``* flip * 127.5 + 127.5`` truncated by
  ``astype(uint8)``; without window tags ``(x - mean) / (max - min)``, which leaves the image in
  roughly the middle half of the grey levels. The one deviation: a multi-valued window uses
  its first value, where the reference's ``float()`` raises ``TypeError``; an empty window
  value counts as missing.

Speed (same output, bit for bit): windowing maps each stored value independently, given a few
whole-image statistics (min, max, mean), so an 8- or 16-bit image is windowed by evaluating the
functions above once per possible stored value (a 65,536-entry lookup table, with the statistics
of the real image) and gathering. Uncompressed little-endian pixel data is read straight from the
file's bytes, without pydicom's copy, when that gives what ``pixel_array`` would (unsigned, one
frame, no bits set above *Bits Stored*). ``load_dicom_uint8(..., fast=False)`` is the plain
reference both paths are tested against.
"""

from __future__ import annotations

from functools import cached_property
from os import PathLike

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

WINDOWINGS = ("dicom", "litegpt")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_NATIVE_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_LUT_CHUNK = 1 << 18  # stored values gathered per step: the index buffer stays in cache


class DicomReadError(ValueError):
    """A file that is not DICOM, has no pixel data or cannot be decoded."""

    def __init__(self, path: str | PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


def _read(path: str | PathLike, **kwargs) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, **kwargs)
    except InvalidDicomError as e:
        raise DicomReadError(path, f"not a DICOM file ({e})") from e
    except (OSError, EOFError, ValueError, KeyError, TypeError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DicomReadError(path, f"unreadable DICOM ({type(e).__name__}: {e})") from e


def read_dicom_size(path: str | PathLike) -> tuple[int, int]:
    """``(width, height)`` = ``(Columns, Rows)`` from the header, without reading pixels."""
    ds = _read(path, stop_before_pixels=True)
    if "Rows" not in ds or "Columns" not in ds:
        raise DicomReadError(path, "no Rows/Columns in the header")
    return int(ds.Columns), int(ds.Rows)


def _first(value):
    """First value of a possibly multi-valued element; ``None`` when empty."""
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    return None if value is None or value == "" else float(value)


def _pixels(ds: pydicom.Dataset, path) -> np.ndarray:
    """The first frame as pydicom decodes it (any transfer syntax)."""
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise DicomReadError(path, "no pixel data")
    try:
        arr = ds.pixel_array
    except Exception as e:  # decoders raise many types (RuntimeError, NotImplementedError, ...)
        raise DicomReadError(path, f"cannot decode pixel data ({type(e).__name__}: {e})") from e
    if ds.get("SamplesPerPixel", 1) != 1:
        raise DicomReadError(path, f"expected a monochrome image, got {ds.get('SamplesPerPixel')} samples per pixel")
    if arr.ndim == 3:  # multi-frame: the first frame
        arr = arr[0]
    if arr.ndim != 2:
        raise DicomReadError(path, f"expected a 2-D image, got shape {arr.shape}")
    return arr


def _native_pixels(ds: pydicom.Dataset) -> np.ndarray | None:
    """Uncompressed little-endian unsigned 8/16-bit single-frame pixels as a view of the file's
    bytes, or ``None`` when ``pixel_array`` could return something else (then it decides)."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    bits = ds.get("BitsAllocated")
    if (syntax not in _NATIVE_LE or "PixelData" not in ds or bits not in (8, 16)
            or ds.get("PixelRepresentation") != 0 or ds.get("SamplesPerPixel", 1) != 1
            or int(ds.get("NumberOfFrames") or 1) != 1 or "Rows" not in ds or "Columns" not in ds):
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    data = ds.PixelData
    dtype = np.dtype("<u2" if bits == 16 else "u1")
    if not isinstance(data, bytes) or rows * cols == 0 or len(data) < rows * cols * dtype.itemsize:
        return None  # truncated or empty: pydicom reports why
    arr = np.frombuffer(data, dtype=dtype, count=rows * cols).reshape(rows, cols)
    stored = int(ds.get("BitsStored") or bits)
    if stored < bits and int(arr.max()) >> stored:
        return None  # bits above Bits Stored: pydicom masks them
    return arr


class _Stats:
    """Whole-image statistics of the stored values, computed on first use."""

    def __init__(self, arr: np.ndarray):
        self._arr = arr

    @cached_property
    def min(self) -> float:
        return float(self._arr.min())

    @cached_property
    def max(self) -> float:
        return float(self._arr.max())

    @cached_property
    def mean(self) -> float:
        """``np.mean`` of the image in float64. For 8/16-bit integers the float64 pairwise sum is
        exact (every partial sum is an integer below 2**53), so an integer sum gives it faster."""
        a = self._arr
        if a.dtype.kind in "ui" and a.itemsize <= 2 and a.size < 2**37:
            return float(int(a.sum(dtype=np.int64))) / a.size
        return float(np.mean(a.astype(np.float64)))


def _modality(ds: pydicom.Dataset, arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """Modality LUT -> float32 values, and whether anything was applied."""
    slope = _first(ds.get("RescaleSlope"))
    intercept = _first(ds.get("RescaleIntercept"))
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32), True
    x = arr.astype(np.float32)
    if slope not in (None, 1.0):
        x *= np.float32(slope)
    if intercept not in (None, 0.0):
        x += np.float32(intercept)
    return x, slope not in (None, 1.0) or intercept not in (None, 0.0)


def _window_dicom(ds: pydicom.Dataset, arr: np.ndarray, stats: _Stats | None = None) -> np.ndarray:
    """The standard display pipeline -> float32 in [0, 1] (before MONOCHROME1 inversion).

    ``stats`` are the image's when ``arr`` is a lookup domain rather than the image; they need a
    monotonic modality transform (no *Modality LUT Sequence*)."""
    x, rescaled = _modality(ds, arr)
    center = _first(ds.get("WindowCenter"))
    width = _first(ds.get("WindowWidth"))
    if center is not None and width is not None and width > 0:
        func = str(ds.get("VOILUTFunction", "LINEAR")).upper()
        c, w = np.float32(center), np.float32(width)
        if func == "SIGMOID":
            with np.errstate(over="ignore"):
                y = np.exp(-4 * (x - c) / w)
            y += 1
            return np.reciprocal(y, out=y)
        if func == "LINEAR_EXACT":
            y = (x - c) / w
        elif width <= 1:  # the linear function degenerates to a threshold at c - 0.5
            return (x > c - np.float32(0.5)).astype(np.float32)
        else:
            y = (x - (c - np.float32(0.5))) / (w - 1)
        y += np.float32(0.5)
        return np.clip(y, 0, 1, out=y)

    if ds.get("VOILUTSequence"):
        ints = np.rint(x).astype(np.int64) if rescaled else arr
        out = apply_voi(ints, ds).astype(np.float32)
        lut = apply_voi(np.arange(-(2**16), 2**16), ds)  # every LUT entry
        lo, hi = float(lut.min()), float(lut.max())
        return (out - lo) / (hi - lo) if hi > lo else np.zeros_like(out)

    if stats is None:
        lo, hi = float(x.min()), float(x.max())
    else:  # the transform of the stored extremes, with the same float32 operations
        ends, _ = _modality(ds, np.array([stats.min, stats.max], dtype=arr.dtype))
        lo, hi = float(ends.min()), float(ends.max())
    if hi <= lo:
        return np.zeros_like(x)
    x -= np.float32(lo)
    x *= np.float32(1.0 / (hi - lo))
    return x


def _window_litegpt(ds: pydicom.Dataset, arr: np.ndarray, stats: _Stats | None = None) -> np.ndarray:
    """LiteGPT appendix A.1, line for line (see the module docstring); ``stats`` as in
    :func:`_window_dicom`."""
    image = arr.astype(np.float64)
    flip = -1 if ds[0x00280004].value == "MONOCHROME1" else 1
    try:
        center, width = _first(ds[0x00281050].value), _first(ds[0x00281051].value)
        if center is None or width is None:
            raise KeyError("empty window")
        normalized_image = (image - center) / width
    except KeyError:
        if stats is None:
            mean, lo, hi = np.mean(image), np.min(image), np.max(image)
        else:
            mean, lo, hi = stats.mean, stats.min, stats.max
        with np.errstate(divide="ignore", invalid="ignore"):
            normalized_image = (image - mean) / (hi - lo)
    with np.errstate(invalid="ignore"):
        return (np.clip(normalized_image, -1, 1) * flip * 127.5 + 127.5).astype(np.uint8)


def _to_uint8(ds: pydicom.Dataset, arr: np.ndarray, windowing: str, stats: _Stats | None = None) -> np.ndarray:
    """Window ``arr`` (the image, or a lookup domain with the image's ``stats``) to uint8."""
    if windowing == "litegpt":
        return _window_litegpt(ds, arr, stats)
    y = _window_dicom(ds, arr, stats)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        y = 1 - y
    y *= np.float32(255)
    with np.errstate(invalid="ignore"):  # domain values absent from the image may fall outside
        return np.rint(y, out=y).astype(np.uint8)


def _to_uint8_lut(ds: pydicom.Dataset, arr: np.ndarray, windowing: str) -> np.ndarray:
    """:func:`_to_uint8` through a table over every 8/16-bit stored value, gathered in chunks."""
    codes = np.dtype(f"u{arr.itemsize}")
    domain = np.arange(2 ** (8 * arr.itemsize), dtype=codes).view(arr.dtype)
    table = _to_uint8(ds, domain, windowing, _Stats(arr))
    src = np.ascontiguousarray(arr).view(codes).reshape(-1)
    out = np.empty(src.size, dtype=np.uint8)
    for i in range(0, src.size, _LUT_CHUNK):
        np.take(table, src[i:i + _LUT_CHUNK], out=out[i:i + _LUT_CHUNK])
    return out.reshape(arr.shape)


def load_dicom_uint8(path: str | PathLike, windowing: str = "dicom", *, fast: bool = True) -> np.ndarray:
    """Decode a monochrome DICOM file to a 2-D ``uint8`` array (rows x columns).

    ``windowing`` is ``"dicom"`` or ``"litegpt"`` (module docstring). Compressed transfer
    syntaxes decode through pydicom's plugins (pylibjpeg, libjpeg, openjpeg, RLE). Raises
    :class:`DicomReadError` for non-DICOM files, files without pixel data and decode failures.
    ``fast=False`` takes the plain path (``pixel_array``, every pixel windowed in floating
    point); the default gives the same array faster (module docstring).
    """
    if windowing not in WINDOWINGS:
        raise ValueError(f"windowing must be one of {WINDOWINGS}, got {windowing!r}")
    ds = _read(path)
    arr = _native_pixels(ds) if fast else None
    if arr is None:
        arr = _pixels(ds, path)
    if fast and arr.dtype.kind in "ui" and arr.itemsize <= 2 and "ModalityLUTSequence" not in ds:
        return _to_uint8_lut(ds, arr, windowing)
    return _to_uint8(ds, arr, windowing)
