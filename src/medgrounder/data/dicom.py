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
"""

from __future__ import annotations

from os import PathLike

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, apply_voi

WINDOWINGS = ("dicom", "litegpt")
_PIXEL_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


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


def _window_dicom(ds: pydicom.Dataset, arr: np.ndarray) -> np.ndarray:
    """The standard display pipeline -> float32 in [0, 1] (before MONOCHROME1 inversion)."""
    slope = _first(ds.get("RescaleSlope"))
    intercept = _first(ds.get("RescaleIntercept"))
    rescaled = "ModalityLUTSequence" in ds or slope not in (None, 1.0) or intercept not in (None, 0.0)
    if "ModalityLUTSequence" in ds:
        x = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    else:
        x = arr.astype(np.float32)
        if slope not in (None, 1.0):
            x *= np.float32(slope)
        if intercept not in (None, 0.0):
            x += np.float32(intercept)

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

    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:
        return np.zeros_like(x)
    x -= np.float32(lo)
    x *= np.float32(1.0 / (hi - lo))
    return x


def _window_litegpt(ds: pydicom.Dataset, arr: np.ndarray) -> np.ndarray:
    """LiteGPT appendix A.1, line for line (see the module docstring)."""
    image = arr.astype(np.float64)
    flip = -1 if ds[0x00280004].value == "MONOCHROME1" else 1
    try:
        center, width = _first(ds[0x00281050].value), _first(ds[0x00281051].value)
        if center is None or width is None:
            raise KeyError("empty window")
        normalized_image = (image - center) / width
    except KeyError:
        with np.errstate(divide="ignore", invalid="ignore"):
            normalized_image = (image - np.mean(image)) / (np.max(image) - np.min(image))
    with np.errstate(invalid="ignore"):
        return (np.clip(normalized_image, -1, 1) * flip * 127.5 + 127.5).astype(np.uint8)


def load_dicom_uint8(path: str | PathLike, windowing: str = "dicom") -> np.ndarray:
    """Decode a monochrome DICOM file to a 2-D ``uint8`` array (rows x columns).

    ``windowing`` is ``"dicom"`` or ``"litegpt"`` (module docstring). Compressed transfer
    syntaxes decode through pydicom's plugins (pylibjpeg, libjpeg, openjpeg, RLE). Raises
    :class:`DicomReadError` for non-DICOM files, files without pixel data and decode failures.
    """
    if windowing not in WINDOWINGS:
        raise ValueError(f"windowing must be one of {WINDOWINGS}, got {windowing!r}")
    ds = _read(path)
    arr = _pixels(ds, path)
    if windowing == "litegpt":
        return _window_litegpt(ds, arr)
    y = _window_dicom(ds, arr)
    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        y = 1 - y
    y *= np.float32(255)
    return np.rint(y, out=y).astype(np.uint8)
