import mmap
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

import medgrounder.data.vindr.dicom as dicom_module
import medgrounder.data.vindr.resample as resample
from medgrounder.data.vindr.dicom import (
    WINDOWINGS,
    DicomReadError,
    _native_pixels,
    load_dicom_reduced,
    load_dicom_uint8,
    read_dicom_size,
    reduce_factors,
)

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def write_dicom(path, pixels, photometric="MONOCHROME2", bits_stored=12, bits_allocated=16, signed=False,
                **tags):
    """A minimal Explicit VR Little Endian file; ``pixels=None`` leaves out Pixel Data."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX
    meta.MediaStorageSOPInstanceUID = "1.2.3.4"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = DX, "1.2.3.4", "DX"
    rows, cols = (3, 5) if pixels is None else pixels.shape
    ds.Rows, ds.Columns = rows, cols
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits_allocated, bits_stored, bits_stored - 1
    ds.PixelRepresentation = int(signed)
    for key, value in tags.items():
        setattr(ds, key, value)
    if pixels is not None:
        dtype = f"<{'i' if signed else 'u'}{bits_allocated // 8}"
        ds.PixelData = np.ascontiguousarray(pixels).astype(dtype).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def litegpt_reference(path):
    """LiteGPT appendix A.1, verbatim (``pydicom.read_file`` is ``dcmread`` in pydicom 3).

    Kept as published, hence the ``noqa`` markers."""
    image_dicom = pydicom.dcmread(path)
    image = image_dicom.pixel_array.astype(np.float64)

    if image_dicom[0x00280004].value == "MONOCHROME1":  # noqa: SIM108
        flip = -1
    else:
        flip = 1
    try:
        normalized_image = ((image - float(image_dicom[0x00281050].value)) / float(image_dicom[0x00281051].value))
        image = ((np.clip(normalized_image, -1, 1) * flip * 127.5 + 127.5)).astype(np.uint8)  # noqa: UP034
    except KeyError:
        normalized_image = ((image - np.mean(image)) / (np.max(image) - np.min(image)))
        image = ((np.clip(normalized_image, -1, 1) * flip * 127.5 + 127.5)).astype(np.uint8)  # noqa: UP034
    return image


# Window c=100, w=51: x <= 74.5 -> 0, x > 124.5 -> 255, else ((x - 99.5) / 50 + 0.5) * 255.
STORED = np.array([[0, 74, 75, 100], [124, 125, 4095, 99]], dtype=np.uint16)
EXPECTED = np.array([[0, 0, 3, 130], [252, 255, 255, 125]], dtype=np.uint8)


def test_linear_window(tmp_path):
    f = write_dicom(tmp_path / "a.dcm", STORED, WindowCenter="100", WindowWidth="51")
    out = load_dicom_uint8(f)
    assert out.dtype == np.uint8 and out.shape == STORED.shape
    np.testing.assert_array_equal(out, EXPECTED)


def test_monochrome1_inverted(tmp_path):
    f = write_dicom(tmp_path / "m1.dcm", STORED, photometric="MONOCHROME1", WindowCenter="100", WindowWidth="51")
    np.testing.assert_array_equal(load_dicom_uint8(f), 255 - EXPECTED)


def test_multi_valued_window_uses_first(tmp_path):
    f = write_dicom(tmp_path / "mv.dcm", STORED, WindowCenter=["100", "2000"], WindowWidth=["51", "4000"])
    assert len(pydicom.dcmread(f).WindowCenter) == 2
    np.testing.assert_array_equal(load_dicom_uint8(f), EXPECTED)


def test_missing_window_uses_full_range(tmp_path):
    stored = np.array([[10, 20, 30], [500, 1000, 1010]], dtype=np.uint16)
    f = write_dicom(tmp_path / "nw.dcm", stored)
    out = load_dicom_uint8(f)
    expected = np.rint((stored - 10.0) / 1000.0 * 255).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.min() == 0 and out.max() == 255
    m1 = write_dicom(tmp_path / "nw1.dcm", stored, photometric="MONOCHROME1")
    np.testing.assert_array_equal(load_dicom_uint8(m1), 255 - expected)


def test_rescale_slope_intercept(tmp_path):
    # Modality values 2 * s - 100 = [-100, 74, 100, 124, 300] under the window c=100, w=51.
    stored = np.array([[0, 87, 100, 112, 200]], dtype=np.uint16)
    f = write_dicom(tmp_path / "rs.dcm", stored, RescaleSlope="2", RescaleIntercept="-100",
                    WindowCenter="100", WindowWidth="51")
    np.testing.assert_array_equal(load_dicom_uint8(f), [[0, 0, 130, 252, 255]])


def test_voi_lut_sequence(tmp_path):
    item = Dataset()
    item.LUTDescriptor = [256, 0, 16]
    item.add_new(0x00283006, "US", [10 * i for i in range(256)])  # LUT Data
    stored = np.array([[0, 1, 100, 255, 300]], dtype=np.uint16)
    f = write_dicom(tmp_path / "lut.dcm", stored, VOILUTSequence=[item])
    # Output spans the LUT's entries 0..2550 -> min(s, 255).
    np.testing.assert_array_equal(load_dicom_uint8(f), [[0, 1, 100, 255, 255]])


@pytest.mark.parametrize(
    ("photometric", "tags"),
    [
        ("MONOCHROME2", {"WindowCenter": "1500", "WindowWidth": "900"}),
        ("MONOCHROME1", {"WindowCenter": "1500", "WindowWidth": "900"}),
        ("MONOCHROME2", {}),
        ("MONOCHROME1", {}),
        ("MONOCHROME2", {"WindowCenter": "1500", "WindowWidth": "900", "RescaleIntercept": "-1024",
                         "RescaleSlope": "1"}),
    ],
)
def test_litegpt_matches_reference_code(tmp_path, photometric, tags):
    stored = np.random.default_rng(0).integers(0, 4096, (37, 53)).astype(np.uint16)
    f = write_dicom(tmp_path / "l.dcm", stored, photometric=photometric, **tags)
    out = load_dicom_uint8(f, windowing="litegpt")
    np.testing.assert_array_equal(out, litegpt_reference(f))
    assert out.dtype == np.uint8 and out.shape == stored.shape


def test_litegpt_multi_valued_window_takes_first(tmp_path):
    stored = np.random.default_rng(1).integers(0, 4096, (8, 9)).astype(np.uint16)
    single = write_dicom(tmp_path / "s.dcm", stored, WindowCenter="1500", WindowWidth="900")
    multi = write_dicom(tmp_path / "m.dcm", stored, WindowCenter=["1500", "100"], WindowWidth=["900", "50"])
    with pytest.raises(TypeError):  # the reference's float(MultiValue)
        litegpt_reference(multi)
    np.testing.assert_array_equal(load_dicom_uint8(multi, windowing="litegpt"), litegpt_reference(single))


def test_litegpt_differs_from_dicom_windowing(tmp_path):
    f = write_dicom(tmp_path / "a.dcm", STORED, WindowCenter="100", WindowWidth="51")
    # center +- width spans the output: x = 100 -> 127, x = 125 -> 190 (truncated).
    assert load_dicom_uint8(f, windowing="litegpt")[0, 3] == 127
    assert load_dicom_uint8(f, windowing="litegpt")[1, 1] == 190
    with pytest.raises(ValueError, match="windowing"):
        load_dicom_uint8(f, windowing="hu")


def test_read_dicom_size(tmp_path):
    f = write_dicom(tmp_path / "a.dcm", np.zeros((7, 11), dtype=np.uint16))
    assert read_dicom_size(f) == (11, 7)


def test_not_dicom_raises(tmp_path):
    f = tmp_path / "notes.dicom"
    f.write_text("image_id,rad_id\n")
    for call in (load_dicom_uint8, read_dicom_size):
        with pytest.raises(DicomReadError, match=r"notes\.dicom") as err:
            call(f)
        assert isinstance(err.value, ValueError) and err.value.path == str(f)


def test_no_pixel_data_raises(tmp_path):
    f = write_dicom(tmp_path / "header_only.dcm", None)
    assert read_dicom_size(f) == (5, 3)
    with pytest.raises(DicomReadError, match=r"header_only\.dcm.*no pixel data"):
        load_dicom_uint8(f)


@pytest.fixture(params=["read", "mapped"])
def reading(request, monkeypatch):
    """How the fast path gets pixel bytes: ``read`` by dcmread (small elements), or ``mapped``
    (dcmread defers every element longer than 64 bytes, the pixels are memory-mapped)."""
    if request.param == "mapped":
        monkeypatch.setattr(dicom_module, "_DEFER_BYTES", 64)
    return request.param


def _is_mapped(arr):
    while isinstance(arr, np.ndarray):
        arr = arr.base
    return isinstance(getattr(arr, "obj", arr), mmap.mmap)  # frombuffer keeps a memoryview


def test_truncated_pixel_data_raises(tmp_path, reading):
    f = write_dicom(tmp_path / "short.dcm", np.zeros((4, 4), dtype=np.uint16))
    ds = pydicom.dcmread(f)
    ds.Rows = 400
    ds.save_as(f, enforce_file_format=True)
    with pytest.raises(DicomReadError, match=r"short\.dcm.*decode"):
        load_dicom_uint8(f)


TESTDATA = [
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "MR_small_bigendian.dcm",
    "JPEG2000.dcm",
]


def _testdata(name):
    try:
        return get_testdata_file(name, download=False)
    except Exception:  # pragma: no cover - network-free lookups should not raise
        return None


@pytest.mark.parametrize("name", TESTDATA)
def test_pydicom_testdata_decodes(name):
    path = _testdata(name)
    assert path is not None, f"{name} should ship with pydicom's offline test data"
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    for windowing in ("dicom", "litegpt"):
        out = load_dicom_uint8(path, windowing=windowing)
        assert out.dtype == np.uint8 and out.shape == (ds.Rows, ds.Columns)
        np.testing.assert_array_equal(out, load_dicom_uint8(path, windowing=windowing, fast=False))
    assert read_dicom_size(path) == (ds.Columns, ds.Rows)
    assert load_dicom_uint8(path).std() > 0


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm"])
def test_lossless_compressed_equals_uncompressed(name):
    path, ref = _testdata(name), _testdata("MR_small.dcm")
    if path is None or ref is None:
        pytest.skip("test data not available offline")
    np.testing.assert_array_equal(load_dicom_uint8(path), load_dicom_uint8(ref))


# The fast path (native bytes + a lookup table) must give the reference path's array exactly.


def _same_both_ways(path, windowing):
    fast = load_dicom_uint8(path, windowing)
    np.testing.assert_array_equal(fast, load_dicom_uint8(path, windowing, fast=False))
    return fast


def _native(path, reading):
    ds = dicom_module._open(path, True)
    native = _native_pixels(ds, path)
    if native is not None:
        assert _is_mapped(native[0]) == (reading == "mapped")
    return native


@pytest.mark.parametrize("windowing", WINDOWINGS)
def test_fast_path_equals_reference_on_synthetic_set(synth_vindr_root, windowing, reading):
    paths = sorted(synth_vindr_root.glob("*/*.dicom"))
    assert len(paths) == 40  # MONOCHROME1, 0 / 1 / 2 windows, rescale, 12 / 14 / 16 bits
    for path in paths:
        assert _native(path, reading) is not None
        _same_both_ways(path, windowing)


RNG = np.random.default_rng(7)
NOISE = RNG.integers(0, 4096, (31, 45))
EDGE_CASES = {
    "window": (NOISE, {"WindowCenter": "1500", "WindowWidth": "900"}),
    "no_window": (NOISE, {}),
    "constant": (np.full((5, 6), 700), {}),
    "threshold": (NOISE, {"WindowCenter": "2000", "WindowWidth": "1"}),
    "sigmoid": (NOISE, {"WindowCenter": "2000", "WindowWidth": "800", "VOILUTFunction": "SIGMOID"}),
    "linear_exact": (NOISE, {"WindowCenter": "2000", "WindowWidth": "800", "VOILUTFunction": "LINEAR_EXACT"}),
    "rescale_no_window": (NOISE, {"RescaleSlope": "-2", "RescaleIntercept": "100"}),
    "two_frames": (np.stack([NOISE, NOISE[::-1]]), {"NumberOfFrames": 2, "WindowCenter": "900", "WindowWidth": "500"}),
    "8_bit": (RNG.integers(0, 256, (9, 7)), {"bits_allocated": 8, "bits_stored": 8}),
    "signed": (RNG.integers(-2048, 2048, (9, 7)), {"signed": True, "RescaleIntercept": "-1024"}),
    "signed_window": (RNG.integers(-2048, 2048, (9, 7)), {"signed": True, "WindowCenter": "0", "WindowWidth": "2000"}),
}


@pytest.mark.parametrize("windowing", WINDOWINGS)
@pytest.mark.parametrize("case", sorted(EDGE_CASES))
def test_fast_path_equals_reference_edge_cases(tmp_path, case, windowing, reading):
    pixels, tags = EDGE_CASES[case]
    rows, cols = pixels.shape[-2:]
    # Frames are stacked in Pixel Data; Rows is one frame's height.
    f = write_dicom(tmp_path / f"{case}.dcm", pixels.reshape(-1, cols), Rows=rows, **tags)
    assert _same_both_ways(f, windowing).shape == (rows, cols)


@pytest.mark.parametrize("window", [True, False])
def test_fast_path_masks_bits_above_bits_stored(tmp_path, reading, window):
    """Values with bits set above Bits Stored are masked as pydicom does (inside the lookup
    table; the statistics of a window-less image too), not read raw."""
    stored = np.tile(STORED, (4, 8))  # 512 bytes: mapped when reading == "mapped"
    dirty = stored | np.uint16(0xF000)
    tags = {"WindowCenter": "100", "WindowWidth": "51"} if window else {}
    f = write_dicom(tmp_path / "dirty.dcm", dirty, **tags)
    arr, mask = _native(f, reading)
    assert mask == 0x0FFF and arr.max() > mask  # the raw bytes, masked by the table
    clean = write_dicom(tmp_path / "clean.dcm", stored, **tags)
    for windowing in WINDOWINGS:
        np.testing.assert_array_equal(_same_both_ways(f, windowing), load_dicom_uint8(clean, windowing))
    if window:
        np.testing.assert_array_equal(load_dicom_uint8(f), np.tile(EXPECTED, (4, 8)))


def test_output_does_not_use_the_mapping(tmp_path, monkeypatch):
    """The returned array owns its pixels: rewriting the mapped file in place (truncated, then
    written) changes neither it nor the next read's correctness."""
    monkeypatch.setattr(dicom_module, "_DEFER_BYTES", 64)
    stored, expected = np.tile(STORED, (4, 8)), np.tile(EXPECTED, (4, 8))
    f = write_dicom(tmp_path / "a.dcm", stored, WindowCenter="100", WindowWidth="51")
    assert _native(f, "mapped") is not None
    out = load_dicom_uint8(f)
    assert not _is_mapped(out)
    write_dicom(f, stored[::-1].copy(), WindowCenter="100", WindowWidth="51")
    np.testing.assert_array_equal(load_dicom_uint8(f), expected[::-1])
    np.testing.assert_array_equal(out, expected)


# load_dicom_reduced: every pixel windowed, then Pillow's box reduction, in one pass: exactly
# Image.reduce of load_dicom_uint8.


def test_reduce_factors():
    assert reduce_factors(3000, 2500, 448) == (6, 5)
    assert reduce_factors(895, 896, 448) == (1, 2)
    assert reduce_factors(100, 40, 448) == (1, 1)


def _pillow_reduced(path, windowing, size):
    img = load_dicom_uint8(path, windowing, fast=False)
    return np.asarray(Image.fromarray(img).reduce(reduce_factors(img.shape[1], img.shape[0], size)))


REDUCE_CASES = {  # stored values, tags; shapes leave partial boxes at the far edges
    "12_bit_window": (RNG.integers(0, 4096, (47, 53)), {"WindowCenter": "2000", "WindowWidth": "1500"}),
    "12_bit_no_window_mono1": (RNG.integers(0, 4096, (47, 53)), {"photometric": "MONOCHROME1"}),
    "16_bit_rescale": (RNG.integers(0, 65536, (40, 61)),
                       {"bits_stored": 16, "RescaleSlope": "2", "RescaleIntercept": "-1000",
                        "WindowCenter": "60000", "WindowWidth": "90000"}),
    "16_bit_no_window": (RNG.integers(3000, 60000, (40, 61)), {"bits_stored": 16}),
    "14_bit_linear_exact_mono1": (RNG.integers(0, 16384, (39, 44)),
                                  {"bits_stored": 14, "photometric": "MONOCHROME1", "WindowCenter": "8000.5",
                                   "WindowWidth": "5000.25", "VOILUTFunction": "LINEAR_EXACT"}),
    "8_bit": (RNG.integers(0, 256, (33, 29)), {"bits_allocated": 8, "bits_stored": 8}),
    "signed": (RNG.integers(-2048, 2048, (35, 41)), {"signed": True, "WindowCenter": "0", "WindowWidth": "3000"}),
    "sigmoid": (RNG.integers(0, 4096, (47, 53)),
                {"WindowCenter": "2000", "WindowWidth": "800", "VOILUTFunction": "SIGMOID"}),
    "threshold": (RNG.integers(0, 4096, (30, 30)), {"WindowCenter": "2000", "WindowWidth": "1"}),
}


@pytest.mark.parametrize("windowing", WINDOWINGS)
@pytest.mark.parametrize("case", sorted(REDUCE_CASES))
@pytest.mark.parametrize("size", [4, 7, 10, 15, 100])  # partial boxes; 100: no reduction
def test_reduced_is_pillows_reduction_of_the_windowed_image(tmp_path, case, windowing, size, reading):
    pixels, tags = REDUCE_CASES[case]
    f = write_dicom(tmp_path / f"{case}.dcm", pixels, **tags)
    out, width, height = load_dicom_reduced(f, size, windowing)
    assert (width, height) == (pixels.shape[1], pixels.shape[0])
    np.testing.assert_array_equal(out, _pillow_reduced(f, windowing, size))


@pytest.fixture
def by_linear(monkeypatch):
    """Whether each box reduction windowed by arithmetic (True) or by the table (False)."""
    calls = []
    real = resample._reduce
    monkeypatch.setattr(resample, "_reduce", lambda t, lin, use, *a: calls.append(use) or real(t, lin, use, *a))
    return calls


@pytest.mark.parametrize("case", ["12_bit_window", "12_bit_no_window_mono1", "16_bit_rescale", "16_bit_no_window",
                                  "14_bit_linear_exact_mono1", "8_bit"])
def test_linear_windows_take_the_arithmetic(tmp_path, case, by_linear, reading):
    """The linear windows of "dicom" (the standard's, LINEAR_EXACT, min..max) reproduce their
    tables on every code they can meet, so their pixels are windowed by arithmetic."""
    pixels, tags = REDUCE_CASES[case]
    f = write_dicom(tmp_path / f"{case}.dcm", pixels, **tags)
    out, *_ = load_dicom_reduced(f, 7)
    assert by_linear == [True]
    np.testing.assert_array_equal(out, _pillow_reduced(f, "dicom", 7))


@pytest.mark.parametrize("case", ["signed", "sigmoid", "threshold", "litegpt"])
def test_other_windows_take_the_table(tmp_path, case, by_linear):
    pixels, tags = REDUCE_CASES["12_bit_window" if case == "litegpt" else case]
    load_dicom_reduced(write_dicom(tmp_path / f"{case}.dcm", pixels, **tags), 7, "litegpt" if case == "litegpt" else "dicom")
    assert by_linear == [False]


def test_reduced_masks_before_averaging(tmp_path, reading):
    clean = RNG.integers(0, 4096, (20, 30)).astype(np.uint16)
    f = write_dicom(tmp_path / "dirty.dcm", clean | np.uint16(0x8000), WindowCenter="2000", WindowWidth="3000")
    g = write_dicom(tmp_path / "clean.dcm", clean, WindowCenter="2000", WindowWidth="3000")
    out, *_ = load_dicom_reduced(f, 5)
    np.testing.assert_array_equal(out, load_dicom_reduced(g, 5)[0])
    np.testing.assert_array_equal(out, _pillow_reduced(g, "dicom", 5))


def test_reduced_float_path_windows_first(tmp_path):
    """A Modality LUT Sequence has no lookup table: every pixel is windowed, then reduced."""
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.add_new(0x00283006, "US", [(i * i) >> 8 for i in range(4096)])  # LUT Data
    f = write_dicom(tmp_path / "mlut.dcm", RNG.integers(0, 4096, (23, 19)), ModalityLUTSequence=[item])
    assert load_dicom_uint8(f, fast=False).std() > 0
    np.testing.assert_array_equal(load_dicom_reduced(f, 4)[0], _pillow_reduced(f, "dicom", 4))


def test_reduced_on_full_size_films(synth_vindr_root):
    """Radiograph-like films at 6 x 6 boxes (a 2,700-pixel film for a 448 cache), both
    windowings."""
    for path in sorted(synth_vindr_root.glob("train/*.dicom"))[:6]:
        full = load_dicom_uint8(path)
        size = min(full.shape) // 6
        for windowing in WINDOWINGS:
            np.testing.assert_array_equal(load_dicom_reduced(path, size, windowing)[0],
                                          _pillow_reduced(path, windowing, size))



# Hostile headers: both paths refuse the same files, naming the element and its value.


def set_raw(path, **values):
    """Rewrite elements of ``path`` with these raw byte strings as their values (``None``
    removes one), as a broken writer would leave them: pydicom hands them back unconverted."""
    from pydicom.datadict import dictionary_VR
    from pydicom.dataelem import RawDataElement
    from pydicom.tag import Tag

    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        tag = Tag(keyword)
        if value is None:
            ds.pop(tag, None)
            continue
        raw = value.encode("latin-1")
        raw += b" " * (len(raw) % 2)
        ds._dict[tag] = RawDataElement(tag, dictionary_VR(tag), len(raw), raw, 0, False, True)
    ds.save_as(path)
    return path


HOSTILE_HEADERS = {  # raw values -> (the message, whether litegpt windowing reads it too)
    "window_center": ({"WindowCenter": "abc", "WindowWidth": "50"}, "Window Center 'abc' is not a number", True),
    "window_multi": ({"WindowCenter": "x\\100", "WindowWidth": "50"}, "Window Center 'x' is not a number", True),
    "window_nan": ({"WindowCenter": "100", "WindowWidth": "nan"}, "Window Width 'nan' is not a finite", True),
    "slope": ({"RescaleSlope": "two"}, "Rescale Slope 'two' is not a number", False),
    "intercept": ({"RescaleIntercept": "1e999"}, "Rescale Intercept '1e999' is not a finite", False),
    "frames": ({"NumberOfFrames": "x"}, "Number of Frames 'x' is not a whole number", True),
    "no_photometric": ({"PhotometricInterpretation": None}, "no Photometric Interpretation", True),
    "rgb": ({"PhotometricInterpretation": "RGB"}, "Photometric Interpretation 'RGB' is not MONOCHROME", True),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_HEADERS))
@pytest.mark.parametrize("windowing", WINDOWINGS)
def test_malformed_header_values_are_named(tmp_path, case, windowing, reading):
    tags, message, litegpt_reads = HOSTILE_HEADERS[case]
    f = set_raw(write_dicom(tmp_path / "h.dcm", STORED), **tags)
    calls = [lambda: load_dicom_uint8(f, windowing), lambda: load_dicom_uint8(f, windowing, fast=False),
             lambda: load_dicom_reduced(f, 2, windowing)]
    for call in calls:
        if windowing == "litegpt" and not litegpt_reads:  # the paper's code never reads rescale
            assert call() is not None
            continue
        with pytest.raises(DicomReadError, match=r"h\.dcm: ") as err:
            call()
        assert message in err.value.reason


@pytest.mark.parametrize("change", ["bits_stored", "columns", "rows"])
def test_fast_path_refuses_what_the_reference_refuses(tmp_path, change, reading):
    """A header whose Bits Stored exceeds Bits Allocated, or whose Rows x Columns is smaller
    than the pixel data: the fast path (native bytes) refuses it as the reference path does."""
    f = write_dicom(tmp_path / "s.dcm", np.tile(STORED, (8, 4)))
    ds = pydicom.dcmread(f)
    if change == "bits_stored":
        ds.BitsStored = 20
    elif change == "columns":
        ds.Columns = ds.Columns - 3
    else:
        ds.Rows = ds.Rows // 2
    ds.save_as(f, enforce_file_format=True)
    reasons = []
    for fast in (True, False):
        with pytest.raises(DicomReadError) as err:
            load_dicom_uint8(f, fast=fast)
        reasons.append(err.value.reason)
    with pytest.raises(DicomReadError) as err:
        load_dicom_reduced(f, 4)
    assert reasons[0] == reasons[1] == err.value.reason
    assert ("Bits Stored 20" if change == "bits_stored" else "does not match the data") in reasons[0]


def test_truncated_jpeg2000_is_named(tmp_path):
    path = _testdata("MR_small_jp2klossless.dcm")
    data = Path(path).read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[:-1500])
    for fast in (True, False):
        with pytest.raises(DicomReadError, match=r"truncated or undecodable JPEG 2000 .*stream") as err:
            load_dicom_uint8(cut, fast=fast)
        assert "no pixel data" not in err.value.reason
