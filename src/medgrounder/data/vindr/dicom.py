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
of the real image) and gathering. Uncompressed little-endian unsigned single-frame pixel data is
not copied at all: ``dcmread`` skips it and the file is memory-mapped, which saves pydicom's two
copies (file read, ``pixel_array``); bits above *Bits Stored* are masked inside the table (as
``pixel_array`` masks them). ``load_dicom_uint8(..., fast=False)`` is the plain reference both
paths are tested against.

Both paths first run :func:`check_header`, so they refuse the same files in the same words
(``Window Center 'abc' is not a number``, Bits Stored above Bits Allocated, Rows x Columns that
do not match the data, no or a non-monochrome Photometric Interpretation, ...); a file cut
inside its Pixel Data is reported as a truncated stream, not as "no pixel data".

For a small cache image, :func:`load_dicom_reduced` windows every pixel and averages integer
boxes of the windowed values in one pass, without the full-size 8-bit image (module
``prepare``).
"""

from __future__ import annotations

import mmap
import os
from functools import cached_property
from os import PathLike

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

from medgrounder.data.vindr.resample import LinearWindow, box_reduce, window_reduce

WINDOWINGS = ("dicom", "litegpt")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_NATIVE_LE = (ExplicitVRLittleEndian, ImplicitVRLittleEndian)
_LUT_CHUNK = 1 << 16  # stored values gathered per step: np.take's intp index copy stays in cache
# Elements longer than this are left in the file by dcmread (pixel data: mapped, or read on use).
_DEFER_BYTES = 1 << 20


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
    except FileNotFoundError:
        raise
    except Exception as e:  # a malformed file makes the parser raise almost anything
        raise DicomReadError(path, f"unreadable DICOM ({type(e).__name__}: {e})") from e


def read_dicom_size(path: str | PathLike) -> tuple[int, int]:
    """``(width, height)`` = ``(Columns, Rows)`` from the header, without reading pixels."""
    ds = _read(path, stop_before_pixels=True)
    try:
        width, height = ds.get("Columns"), ds.get("Rows")
    except Exception as e:  # pydicom's value conversion
        raise DicomReadError(path, f"unreadable Rows/Columns ({type(e).__name__}: {e})") from e
    if not isinstance(width, int) or not isinstance(height, int):
        raise DicomReadError(path, "no Rows/Columns in the header")
    return width, height


class HeaderValueError(ValueError):
    """A header element whose value cannot be used (the message names the element and value)."""


# Keyword -> the standard's name, for messages.
_NAMES = {"WindowCenter": "Window Center", "WindowWidth": "Window Width", "RescaleSlope": "Rescale Slope",
          "RescaleIntercept": "Rescale Intercept", "NumberOfFrames": "Number of Frames"}
_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")


def _get(ds: pydicom.Dataset, keyword: str):
    """``ds.get(keyword)``; a value pydicom cannot convert is a :class:`HeaderValueError`."""
    try:
        return ds.get(keyword)
    except Exception as e:  # pydicom's value conversion raises ValueError, TypeError, ...
        raise HeaderValueError(f"{_NAMES.get(keyword, keyword)}: unreadable value ({type(e).__name__}: {e})") from e


def _number(ds: pydicom.Dataset, keyword: str) -> float | None:
    """The first value of a numeric element as a finite float; ``None`` when absent or empty.

    pydicom hands a malformed decimal string over as text (``'abc'``) with a warning; this is
    where it is refused, by name: ``Window Center 'abc' is not a number``."""
    value = _get(ds, keyword)
    if isinstance(value, MultiValue | list | tuple):
        value = value[0] if len(value) else None
    if value is None or (isinstance(value, str | bytes) and not value.strip()):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise HeaderValueError(f"{_NAMES.get(keyword, keyword)} {_text(value)} is not a number") from None
    if not np.isfinite(number):
        raise HeaderValueError(f"{_NAMES.get(keyword, keyword)} {_text(value)} is not a finite number")
    return number


def _text(value) -> str:
    """A header value for a message: quoted, and cut short."""
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    return repr(text if len(text) <= 40 else text[:37] + "...")


def _frames(ds: pydicom.Dataset) -> int:
    """*Number of Frames* (1 when absent, empty or 0, as pydicom reads it)."""
    value = _get(ds, "NumberOfFrames")
    if value is None or (isinstance(value, str) and not value.strip()):
        return 1
    try:
        frames = int(value)
    except (TypeError, ValueError):
        raise HeaderValueError(f"Number of Frames {_text(value)} is not a whole number") from None
    if frames < 0 or frames != float(value):
        raise HeaderValueError(f"Number of Frames {_text(value)} is not a whole number")
    return max(frames, 1)


def _pixel_length(ds: pydicom.Dataset) -> int | None:
    """Bytes in the (uncompressed) Pixel Data element, read or deferred; ``None``: unknown."""
    elem = ds.get_item("PixelData", keep_deferred=True)
    if elem is None:
        return None
    if elem.value is None:  # deferred: the length read from the file
        length = getattr(elem, "length", None)
        return None if length in (None, 0xFFFFFFFF) else int(length)
    return len(elem.value) if isinstance(elem.value, bytes) else None


def check_header(ds: pydicom.Dataset, windowing: str = "dicom") -> None:
    """Refuse, by name, the header values both decoding paths would trip over or misread:
    the numbers ``windowing`` uses, *Number of Frames*, *Photometric Interpretation* (a
    radiograph is MONOCHROME1 or MONOCHROME2), *Bits Stored* above *Bits Allocated*, and an
    uncompressed Pixel Data longer than *Rows* x *Columns* x frames says (more than the one
    padding byte: the size in the header is wrong, the image would come out sheared).
    Raises :class:`HeaderValueError`."""
    keywords = ("WindowCenter", "WindowWidth") if windowing == "litegpt" else (
        "WindowCenter", "WindowWidth", "RescaleSlope", "RescaleIntercept")
    for keyword in keywords:
        _number(ds, keyword)
    frames = _frames(ds)
    photometric = _get(ds, "PhotometricInterpretation")
    if photometric is None or not str(photometric).strip():
        raise HeaderValueError("no Photometric Interpretation in the header (expected MONOCHROME1 or MONOCHROME2)")
    if str(photometric).strip() not in _MONOCHROME:
        raise HeaderValueError(f"Photometric Interpretation {_text(photometric)} is not MONOCHROME1 or MONOCHROME2")
    allocated, stored = _get(ds, "BitsAllocated"), _get(ds, "BitsStored")
    if isinstance(allocated, int) and isinstance(stored, int) and not 0 < stored <= allocated:
        raise HeaderValueError(f"Bits Stored {stored} is not between 1 and Bits Allocated {allocated}")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    rows, cols = _get(ds, "Rows"), _get(ds, "Columns")
    if (syntax is None or syntax.is_compressed or not isinstance(allocated, int) or not isinstance(rows, int)
            or not isinstance(cols, int) or "PixelData" not in ds):
        return
    samples = _get(ds, "SamplesPerPixel") or 1
    bits = rows * cols * frames * (samples if isinstance(samples, int) else 1) * allocated
    need = (bits + 7) // 8
    length = _pixel_length(ds)
    if length is not None and length > need + 1:  # one byte pads an odd length
        raise HeaderValueError(
            f"Pixel Data holds {length} bytes, but Rows x Columns x frames = {rows} x {cols} x {frames} "
            f"at {allocated} bits is {need}: the image size in the header does not match the data")


def _pixels(ds: pydicom.Dataset, path) -> np.ndarray:
    """The first frame as pydicom decodes it (any transfer syntax)."""
    if not any(tag in ds for tag in _PIXEL_TAGS):
        raise DicomReadError(path, _no_pixels_reason(ds, path))
    try:
        arr = ds.pixel_array
    except Exception as e:  # decoders raise many types (RuntimeError, NotImplementedError, ...)
        raise DicomReadError(path, f"cannot decode {_syntax_name(ds)} pixel data ({type(e).__name__}: {e})") from e
    if ds.get("SamplesPerPixel", 1) != 1:
        raise DicomReadError(path, f"expected a monochrome image, got {ds.get('SamplesPerPixel')} samples per pixel")
    if arr.ndim == 3:  # multi-frame: the first frame
        arr = arr[0]
    if arr.ndim != 2:
        raise DicomReadError(path, f"expected a 2-D image, got shape {arr.shape}")
    return arr


def _syntax_name(ds: pydicom.Dataset) -> str:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return syntax.name if syntax is not None and syntax.is_compressed else "uncompressed"


_PIXEL_DATA_TAG = b"\xe0\x7f\x10\x00"  # (7FE0,0010) little endian


def _no_pixels_reason(ds: pydicom.Dataset, path) -> str:
    """Why ``ds`` has no pixel data: a file cut inside its Pixel Data (``dcmread`` drops an
    element the file ends in, with only a warning) or none at all."""
    try:
        with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
            cut = data.rfind(_PIXEL_DATA_TAG) >= 0
    except (TypeError, OSError, ValueError):  # a file object, or an empty file
        cut = False
    if not cut:
        return "no pixel data"
    syntax = _syntax_name(ds)
    kind = f"{syntax} stream" if syntax != "uncompressed" else "uncompressed Pixel Data"
    return f"truncated or undecodable {kind}: the file ends inside its Pixel Data element"


def _map_read_only(fileno: int) -> mmap.mmap:
    """The whole file, read-only; on Linux every page mapped at once (``MAP_POPULATE``), which is
    cheaper than a page fault per 64 KiB on first touch."""
    if hasattr(mmap, "MAP_POPULATE"):
        return mmap.mmap(fileno, 0, flags=mmap.MAP_SHARED | mmap.MAP_POPULATE, prot=mmap.PROT_READ)
    return mmap.mmap(fileno, 0, access=mmap.ACCESS_READ)


def _native_pixels(ds: pydicom.Dataset, path: str | PathLike | None = None) -> tuple[np.ndarray, int | None] | None:
    """Uncompressed little-endian unsigned 8/16-bit single-frame pixels, uncopied, and the mask of
    *Bits Stored* still to apply to them (``None``: nothing above it); ``None`` when
    ``pixel_array`` could return something else (then it decides, and reports errors).

    Pixel Data that ``dcmread`` deferred is memory-mapped from ``path``; the mapping closes when
    the last array using it is freed."""
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    bits = ds.get("BitsAllocated")
    if (syntax not in _NATIVE_LE or "PixelData" not in ds or bits not in (8, 16)
            or ds.get("PixelRepresentation") != 0 or ds.get("SamplesPerPixel", 1) != 1
            or _frames(ds) != 1 or "Rows" not in ds or "Columns" not in ds):
        return None
    rows, cols = int(ds.Rows), int(ds.Columns)
    dtype = np.dtype("<u2" if bits == 16 else "u1")
    need = rows * cols * dtype.itemsize
    elem = ds.get_item("PixelData", keep_deferred=True)
    if elem.value is None and getattr(elem, "value_tell", None) is not None and path is not None:
        with open(path, "rb") as f:
            if (need == 0 or elem.length < need
                    or os.fstat(f.fileno()).st_size < elem.value_tell + need):
                return None  # truncated or empty: pydicom reports why
            data = _map_read_only(f.fileno())
        offset = elem.value_tell
    else:
        data, offset = ds.PixelData, 0
        if not isinstance(data, bytes) or need == 0 or len(data) < need:
            return None
    arr = np.frombuffer(data, dtype=dtype, count=rows * cols, offset=offset).reshape(rows, cols)
    stored = int(ds.get("BitsStored") or bits)
    return arr, ((1 << stored) - 1 if 0 < stored < bits else None)


def _stored_values(ds: pydicom.Dataset, path, fast: bool, windowing: str) -> tuple[np.ndarray, int | None]:
    """The first frame's stored values and the mask still to apply (see :func:`_native_pixels`),
    after :func:`check_header` (both paths refuse the same headers, in the same words)."""
    if not any(tag in ds for tag in _PIXEL_TAGS):  # first: a file cut short may have lost its header too
        raise DicomReadError(path, _no_pixels_reason(ds, path))
    try:
        check_header(ds, windowing)
    except HeaderValueError as e:
        raise DicomReadError(path, str(e)) from e
    native = _native_pixels(ds, path) if fast else None
    return native if native is not None else (_pixels(ds, path), None)


class _Stats:
    """Whole-image statistics of the stored values (``& mask``), computed on first use."""

    def __init__(self, arr: np.ndarray, mask: int | None = None):
        self._arr = arr
        self._mask = mask

    @cached_property
    def _values(self) -> np.ndarray:
        a = self._arr
        if self._mask is not None:
            top = int(a.max())
            if top <= self._mask:
                self.__dict__.setdefault("max", float(top))
            else:
                a = a & a.dtype.type(self._mask)
        return a

    @cached_property
    def min(self) -> float:
        return float(self._values.min())

    @cached_property
    def max(self) -> float:
        return float(self._values.max())

    @cached_property
    def mean(self) -> float:
        """``np.mean`` of the image in float64. For 8/16-bit integers the float64 pairwise sum is
        exact (every partial sum is an integer below 2**53), so an integer sum gives it faster."""
        a = self._values
        if a.dtype.kind in "ui" and a.itemsize <= 2 and a.size < 2**37:
            return float(int(a.sum(dtype=np.int64))) / a.size
        return float(np.mean(a.astype(np.float64)))


def _modality(ds: pydicom.Dataset, arr: np.ndarray) -> tuple[np.ndarray, bool]:
    """Modality LUT -> float32 values, and whether anything was applied."""
    slope = _number(ds, "RescaleSlope")
    intercept = _number(ds, "RescaleIntercept")
    if "ModalityLUTSequence" in ds:
        return np.asarray(apply_modality_lut(arr, ds), dtype=np.float32), True
    x = arr.astype(np.float32)
    if slope not in (None, 1.0):
        x *= np.float32(slope)
    if intercept not in (None, 0.0):
        x += np.float32(intercept)
    return x, slope not in (None, 1.0) or intercept not in (None, 0.0)


def _window_tags(ds: pydicom.Dataset) -> tuple[float, float, str] | None:
    """``(center, width, VOI LUT Function)`` of the first usable window (width > 0), else ``None``."""
    center, width = _number(ds, "WindowCenter"), _number(ds, "WindowWidth")
    if center is None or width is None or width <= 0:
        return None
    return center, width, str(ds.get("VOILUTFunction", "LINEAR")).upper()


def _monochrome1(ds: pydicom.Dataset) -> bool:
    return str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1"


def _window_dicom(ds: pydicom.Dataset, arr: np.ndarray, stats: _Stats | None = None) -> np.ndarray:
    """The standard display pipeline -> float32 in [0, 1] (before MONOCHROME1 inversion).

    ``stats`` are the image's when ``arr`` is a lookup domain rather than the image; they need a
    monotonic modality transform (no *Modality LUT Sequence*)."""
    x, rescaled = _modality(ds, arr)
    if (window := _window_tags(ds)) is not None:
        center, width, func = window
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

    lo, hi = (float(x.min()), float(x.max())) if stats is None else _modality_range(ds, arr, stats)
    if hi <= lo:
        return np.zeros_like(x)
    x -= np.float32(lo)
    x *= np.float32(1.0 / (hi - lo))
    return x


def _modality_range(ds: pydicom.Dataset, arr: np.ndarray, stats: _Stats) -> tuple[float, float]:
    """The image's range after the modality LUT: the transform of the stored extremes, with the
    same float32 operations as the image's."""
    ends, _ = _modality(ds, np.array([stats.min, stats.max], dtype=arr.dtype))
    return float(ends.min()), float(ends.max())


def _window_litegpt(ds: pydicom.Dataset, arr: np.ndarray, stats: _Stats | None = None) -> np.ndarray:
    """LiteGPT appendix A.1, line for line (see the module docstring); ``stats`` as in
    :func:`_window_dicom`."""
    image = arr.astype(np.float64)
    flip = -1 if ds[0x00280004].value == "MONOCHROME1" else 1
    try:
        center, width = _number(ds, "WindowCenter"), _number(ds, "WindowWidth")
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
    if _monochrome1(ds):
        y = 1 - y
    y *= np.float32(255)
    with np.errstate(invalid="ignore"):  # domain values absent from the image may fall outside
        return np.rint(y, out=y).astype(np.uint8)


def _linear_window(ds: pydicom.Dataset, arr: np.ndarray, windowing: str, stats: _Stats
                   ) -> tuple[LinearWindow, tuple[int, int] | None] | None:
    """The float32 arithmetic of ``_window_dicom`` and ``_to_uint8`` where it is linear, and the
    codes it must reproduce the table on (``None``: all): a window (the standard's linear
    function or ``LINEAR_EXACT``), or the data's min..max (codes min..max only, as the window of
    codes outside them is not linear); ``None`` for every other windowing."""
    if windowing != "dicom" or "ModalityLUTSequence" in ds:
        return None
    slope, intercept = _number(ds, "RescaleSlope"), _number(ds, "RescaleIntercept")
    flip = _monochrome1(ds)
    f32 = np.float32

    def linear(offset, divisor, scale, shift):
        return LinearWindow(f32(1 if slope is None else slope), f32(intercept or 0), f32(offset), f32(divisor),
                            f32(scale), f32(shift), f32(-1 if flip else 1), f32(1 if flip else 0))

    if (window := _window_tags(ds)) is not None:
        center, width, func = window
        c, w = f32(center), f32(width)
        if func == "LINEAR_EXACT":
            return linear(c, w, 1, 0.5), None
        if func == "SIGMOID" or width <= 1:
            return None
        return linear(c - f32(0.5), w - 1, 1, 0.5), None  # the standard's linear function
    if ds.get("VOILUTSequence"):
        return None
    lo, hi = _modality_range(ds, arr, stats)
    if hi <= lo:
        return None
    return linear(lo, 1, f32(1.0 / (hi - lo)), 0), (int(stats.min), int(stats.max))


def _lut_ok(ds: pydicom.Dataset, arr: np.ndarray) -> bool:
    """Whether ``arr`` can be windowed through a table of every stored value."""
    return arr.dtype.kind in "ui" and arr.itemsize <= 2 and "ModalityLUTSequence" not in ds


def _table(ds: pydicom.Dataset, arr: np.ndarray, windowing: str, mask: int | None = None,
           stats: _Stats | None = None, top: int | None = None) -> np.ndarray:
    """uint8 window of every 8/16-bit code (``arr``'s statistics), indexed by the unsigned code;
    with ``mask``, a code's entry is that of its masked value; with ``top`` (unsigned ``arr``
    only), just the codes up to it."""
    codes = np.dtype(f"u{arr.itemsize}")
    domain = np.arange(2 ** (8 * arr.itemsize) if top is None else top + 1, dtype=codes)
    if mask is not None:
        domain &= codes.type(mask)
    return _to_uint8(ds, domain.view(arr.dtype), windowing, stats or _Stats(arr, mask))


def _gather(table: np.ndarray, arr: np.ndarray) -> np.ndarray:
    """``table[arr]`` by unsigned code, in chunks."""
    src = np.ascontiguousarray(arr).view(f"u{arr.itemsize}").reshape(-1)
    out = np.empty(src.size, dtype=np.uint8)
    for i in range(0, src.size, _LUT_CHUNK):
        # Codes never exceed the table, so "wrap" changes nothing; it skips "raise"'s checks.
        np.take(table, src[i:i + _LUT_CHUNK], out=out[i:i + _LUT_CHUNK], mode="wrap")
    return out.reshape(arr.shape)


def _open(path: str | PathLike, fast: bool) -> pydicom.Dataset:
    """The dataset; on the fast path a named file's big elements stay in it (deferred)."""
    if fast and isinstance(path, str | PathLike):
        return _read(os.fspath(path), defer_size=_DEFER_BYTES)
    return _read(path)


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
    ds = _open(path, fast)
    arr, mask = _stored_values(ds, path, fast, windowing)
    if fast and _lut_ok(ds, arr):
        return _gather(_table(ds, arr, windowing, mask), arr)
    if mask is not None:
        arr = arr & arr.dtype.type(mask)
    return _to_uint8(ds, arr, windowing)


# --------------------------------------------------------------------------------------------
# Windowed and box-reduced in one pass (the cache images of ``prepare``)


def reduce_factors(width: int, height: int, size: int) -> tuple[int, int]:
    """Integer box factors ``(x, y)`` that Pillow's ``resize(..., reducing_gap=1)`` reduces a
    ``width x height`` image by on its way to ``size x size``: to between ``size`` and
    ``2 * size - 1`` pixels a side (1 on a side already below ``2 * size``)."""
    return max(1, width // size), max(1, height // size)


def load_dicom_reduced(path: str | PathLike, size: int, windowing: str = "dicom") -> tuple[np.ndarray, int, int]:
    """``(image, width, height)``: every pixel windowed as :func:`load_dicom_uint8` windows it,
    then averaged over integer boxes (:func:`reduce_factors` for ``size``) as Pillow's
    ``Image.reduce`` averages, and the original size.

    Equal to ``Image.fromarray(load_dicom_uint8(path, windowing)).reduce(reduce_factors(w, h,
    size))`` bit for bit, in one pass over the stored values without the full-size 8-bit image
    (:func:`~medgrounder.data.vindr.resample.window_reduce`).
    """
    if windowing not in WINDOWINGS:
        raise ValueError(f"windowing must be one of {WINDOWINGS}, got {windowing!r}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    ds = _open(path, True)
    arr, mask = _stored_values(ds, path, True, windowing)
    h, w = arr.shape
    kx, ky = reduce_factors(w, h, size)
    if not _lut_ok(ds, arr):  # float pixels or a Modality LUT Sequence: window, then reduce
        if mask is not None:
            arr = arr & arr.dtype.type(mask)
        return box_reduce(_to_uint8(ds, arr, windowing), kx, ky), w, h
    # With a Bits Stored mask the table needs only the codes below it.
    stats = _Stats(arr, mask)
    table = _table(ds, arr, windowing, stats=stats, top=mask)
    linear, codes = _linear_window(ds, arr, windowing, stats) or (None, None)
    return window_reduce(table, arr, kx, ky, mask, linear, codes), w, h
