"""``prepare``'s per-image path vs pydicom's decode and the LiteGPT appendix code; label
building at Kaggle size.

    python bench/bench_prepare.py [--n 16] [--size 448] [--rounds 7] [--compressed 4] [--compressed-rounds 3]
                                  [--rows 67914] [--workdir DIR]

Part 1 writes ``--n`` full-size synthetic DICOMs (2500-3000 pixels a side, 12-16 bits) with the
synth code and times, one image at a time in this one process (one core), interleaved over
``--rounds`` rounds (each method's per-image median over the rounds, averaged over the images;
this process's CPU time, i.e. per core, unless ``--clock wall``):

- pydicom's raw pixel decode alone (``dcmread`` + ``pixel_array``), the reference;
- the LiteGPT appendix A.1 code (float64 windowing, verbatim), its RGB conversion and a bilinear
  resize to ``--size``;
- ``prepare``'s path: window every pixel and box-reduce in one pass, then bilinear
  (``load_cache_image``), and the whole per-image job (``prepare_image``: that plus the PNG
  write);
- the path before the one-pass kernel: the full-size 8-bit image (``load_dicom_uint8``), then
  Pillow's resize (``reducing_gap=1``, the same box reduction; checked within a grey level:
  Pillow 13 may run the vertical bilinear pass first).

Then where the time goes, step by step (the same helpers, checked to give the same arrays).
Overheads compare whole paths: ``prepare`` gets its pixels its own way (an uncompressed file is
memory-mapped, not copied twice as ``dcmread`` + ``pixel_array`` do), so part of its budget is
what it does not copy. Files are read from the page cache (every round after the first).

The first ``--compressed`` images are also re-encoded as JPEG 2000 lossless and timed the same
way (without the PNG write, over ``--compressed-rounds`` rounds): there decoding does real work, where an uncompressed file's decode is about two copies.

Part 2 writes a Kaggle-layout ``train.csv`` with the synth command (tiny DICOMs), cut to exactly
``--rows`` rows, and times label building: csv parsing, DICOM header reads, and records
(conflicts, clipping, de-duplication) with their answer strings.

Prints numbers and ratios; asserts nothing about time.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.multival import MultiValue
from pydicom.uid import JPEG2000Lossless

from medgrounder.core.boxes import to_grid
from medgrounder.data.vindr import dicom
from medgrounder.data.vindr.dicom import load_dicom_uint8
from medgrounder.data.vindr.layout import dicom_path
from medgrounder.data.vindr.prepared import (
    load_cache_image,
    prepare_image,
    resize_reduced,
    resize_square,
)
from medgrounder.data.vindr.records import build_records, parse_kaggle, read_sizes
from medgrounder.data.vindr.resample import window_reduce
from medgrounder.data.vindr.synth import synth_vindr
from medgrounder.tasks.identify import identify_answer


def _first(value) -> float:
    """``float(value)``; the first value of a two-valued window, where the paper's ``float()``
    raises (the one change to its code, as in ``load_dicom_uint8(windowing="litegpt")``)."""
    return float(value[0]) if isinstance(value, MultiValue) else float(value)


def litegpt_appendix(path: str) -> Image.Image:
    """LiteGPT appendix A.1 (``read_file`` is ``dcmread`` in pydicom 3), kept as published."""
    image_dicom = pydicom.dcmread(path)
    image = image_dicom.pixel_array.astype(np.float64)

    if image_dicom[0x00280004].value == "MONOCHROME1":  # noqa: SIM108
        flip = -1
    else:
        flip = 1
    try:
        normalized_image = ((image - _first(image_dicom[0x00281050].value)) / _first(image_dicom[0x00281051].value))
        image = ((np.clip(normalized_image, -1, 1) * flip * 127.5 + 127.5)).astype(np.uint8)  # noqa: UP034
    except KeyError:
        normalized_image = ((image - np.mean(image)) / (np.max(image) - np.min(image)))
        image = ((np.clip(normalized_image, -1, 1) * flip * 127.5 + 127.5)).astype(np.uint8)  # noqa: UP034

    image = Image.fromarray(image).convert("RGB")
    return image


def litegpt_baseline(path: str, size: int) -> np.ndarray:
    """The appendix code, then a bilinear resize to the cache size."""
    return np.asarray(litegpt_appendix(path).resize((size, size), Image.BILINEAR))


def pydicom_decode(path: str) -> np.ndarray:
    return pydicom.dcmread(path).pixel_array


# Step by step, with the loaders' own helpers (``load_dicom_reduced`` / ``load_dicom_uint8``,
# windowing "dicom"); each returns its result and {step: seconds}.


# CPU time of this process by default: the per-core cost, and far less disturbed than wall time
# by other load on a shared machine (--clock wall for wall time).
CLOCK = time.process_time


class _Clock:
    def __init__(self):
        self.steps: dict[str, float] = {}
        self._last = CLOCK()

    def lap(self, name: str) -> None:
        now = CLOCK()
        self.steps[name] = self.steps.get(name, 0.0) + now - self._last
        self._last = now


def steps_decode(path: str, size: int):
    c = _Clock()
    ds = pydicom.dcmread(path)
    c.lap("dcmread (whole file)")
    arr = ds.pixel_array
    c.lap("pixel_array")
    return arr, c.steps


def steps_prepare(path: str, size: int):
    c = _Clock()
    ds = dicom._open(path, True)
    c.lap("header (dcmread, pixels deferred)")
    arr, mask = dicom._stored_values(ds, path, True)
    c.lap("pixels (map, or decode)")
    h, w = arr.shape
    stats = dicom._Stats(arr, mask)
    table = dicom._table(ds, arr, "dicom", stats=stats, top=mask)
    linear, codes = dicom._linear_window(ds, arr, "dicom", stats) or (None, None)
    c.lap("window table (codes below Bits Stored)")
    img = window_reduce(table, arr, *dicom.reduce_factors(w, h, size), mask, linear, codes)
    c.lap("window + box reduction, one pass")
    out = resize_reduced(img, w, h, size)
    c.lap("bilinear from the box means (numba)")
    return out, c.steps


def steps_two_pass(path: str, size: int):
    c = _Clock()
    ds = dicom._open(path, True)
    c.lap("header (dcmread, pixels deferred)")
    arr, mask = dicom._stored_values(ds, path, True)
    c.lap("pixels (map, or decode)")
    table = dicom._table(ds, arr, "dicom", mask)
    c.lap("window table (65,536 codes)")
    img = dicom._gather(table, arr)
    c.lap("window: gather every pixel")
    out = pillow_resize(img, size)
    c.lap("resize (Pillow reduce + bilinear)")
    return out, c.steps


def pillow_resize(img: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR, reducing_gap=1.0))


def _timed(fn, *args) -> float:
    start = CLOCK()
    fn(*args)
    return CLOCK() - start


def _median_ms(per_image: list[list[float]], keep: list[bool] | None = None) -> float:
    """Per-image median over the rounds, averaged over the (kept) images, in ms."""
    return 1000 * float(np.mean([np.median(v) for i, v in enumerate(per_image) if keep is None or keep[i]]))


def _time_methods(paths: list[str], methods: dict, steps: dict, rounds: int, png: Path, size: int):
    """Each round runs every method, then every step-by-step path, over all images in turn: a
    method meets the allocator state it leaves itself, as in a real run (a float64 baseline
    before it would otherwise hand it freshly unmapped memory to fault in), and the rounds spread
    background load over all methods. Returns ms per method and ms per path and step."""
    times = {m: [[] for _ in paths] for m in methods}
    step_times: dict = {k: {} for k in steps}
    for _ in range(rounds):
        for name, fn in methods.items():
            for i, path in enumerate(paths):
                png.unlink(missing_ok=True)  # prepare_image skips finished images
                times[name][i].append(_timed(fn, path))
        for name, fn in steps.items():
            for i, path in enumerate(paths):
                for step, sec in fn(path, size)[1].items():
                    step_times[name].setdefault(step, [[] for _ in paths])[i].append(sec)
    bits = [int(pydicom.dcmread(p, stop_before_pixels=True).BitsStored) for p in paths]
    by_bits = {b: {m: _median_ms(v, [x == b for x in bits]) for m, v in times.items()} for b in sorted(set(bits))}
    return ({m: _median_ms(v) for m, v in times.items()},
            {k: {s: _median_ms(v) for s, v in st.items()} for k, st in step_times.items()}, by_bits)


STEPS = {"decode": steps_decode, "prepare": steps_prepare, "two_pass": steps_two_pass}
STEP_TITLES = {"decode": "pydicom decode alone", "prepare": "prepare (one pass)",
               "two_pass": "8-bit image, then Pillow's resize"}


def _print_times(ms: dict[str, float], steps: dict, by_bits: dict) -> None:
    dec = ms["decode"]
    print(f"  pydicom decode alone (dcmread + pixel_array)     {dec:8.1f} ms/image")
    print(f"  LiteGPT appendix (float64) + RGB + resize        {ms['litegpt']:8.1f} ms/image")
    for key in ("prepare", "two_pass"):
        print(f"  {STEP_TITLES[key]:38s} decode + window + resize {ms[key]:7.1f} ms/image  "
              f"{100 * (ms[key] / dec - 1):+7.1f} % over pydicom decode (target <= +30 %)")
    if "job" in ms:
        print(f"  prepare, whole job incl. PNG write               {ms['job']:8.1f} ms/image  "
              f"{ms['litegpt'] / ms['job']:7.2f}x faster than LiteGPT per core (target >= 3x)")
    if len(by_bits) > 1:
        print("  over pydicom decode by bits stored:")
        for b, m in by_bits.items():
            print(f"      {b} bits: decode {m['decode']:6.1f} ms, prepare {100 * (m['prepare'] / m['decode'] - 1):+7.1f} %, "
                  f"8-bit + Pillow {100 * (m['two_pass'] / m['decode'] - 1):+7.1f} %")
    for key, st in steps.items():
        print(f"  where the time goes, {STEP_TITLES[key]} (sum {sum(st.values()):.1f} ms):")
        for step, t in st.items():
            print(f"      {step:40s} {t:7.2f} ms")


def _check_steps(paths: list[str], size: int) -> None:
    """The step-by-step paths compute what ``prepare`` computes; Pillow within a grey level."""
    for p in paths:
        want = load_cache_image(p, size)[0]
        assert np.array_equal(resize_square(load_dicom_uint8(p), size), want), p
        assert np.array_equal(steps_prepare(p, size)[0], want), p
        assert np.abs(steps_two_pass(p, size)[0].astype(int) - want).max() <= 1, p


def bench_images(work: Path, n: int, size: int, rounds: int, compressed: int, compressed_rounds: int) -> None:
    root = work / "full_size"
    start = time.perf_counter()
    synth_vindr(root, n=n, seed=0, test_frac=0.0, min_side=2500, max_side=3000)
    paths = sorted(str(p) for p in (root / "train").glob("*.dicom"))
    shapes = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    pixels = np.mean([ds.Rows * ds.Columns for ds in shapes]) / 1e6
    bits = sorted({int(ds.BitsStored) for ds in shapes})
    clock = "CPU time" if CLOCK is time.process_time else "wall time"
    print(f"{len(paths)} synthetic DICOMs (uncompressed), {pixels:.1f} Mpixel on average, {bits} bits stored, "
          f"written in {time.perf_counter() - start:.1f} s; cache size {size}; {rounds} rounds, one process, {clock}")

    same = sum(np.array_equal(load_dicom_uint8(p), load_dicom_uint8(p, fast=False)) for p in paths)
    paper = sum(np.array_equal(np.asarray(litegpt_appendix(p))[..., 0], load_dicom_uint8(p, "litegpt"))
                for p in paths)
    _check_steps(paths, size)
    png = work / "one.png"
    methods = {
        "decode": pydicom_decode,
        "litegpt": lambda p: litegpt_baseline(p, size),
        "prepare": lambda p: load_cache_image(p, size),
        "two_pass": lambda p: pillow_resize(load_dicom_uint8(p), size),
        "job": lambda p: prepare_image((p, str(png), size, "dicom")),
    }
    _print_times(*_time_methods(paths, methods, STEPS, rounds, png, size))
    print(f"  fast windowing identical to the float reference: {same}/{len(paths)} images; "
          f"windowing='litegpt' identical to the appendix code: {paper}/{len(paths)}")
    if compressed:
        no_jobs = {k: v for k, v in methods.items() if k != "job"}
        bench_compressed(work, paths[:compressed], no_jobs, compressed_rounds, png, size)


def bench_compressed(work: Path, paths: list[str], methods: dict, rounds: int, png: Path, size: int) -> None:
    """The same images re-encoded as JPEG 2000 lossless, where decoding does real work."""
    out = work / "j2k"
    out.mkdir(exist_ok=True)
    j2k = []
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.compress(JPEG2000Lossless)
        j2k.append(str(out / Path(path).name))
        ds.save_as(j2k[-1], enforce_file_format=True)
    same = sum(np.array_equal(load_dicom_uint8(a), load_dicom_uint8(b)) for a, b in zip(paths, j2k, strict=True))
    _check_steps(j2k, size)
    print(f"\nThe first {len(j2k)} of them as JPEG 2000 lossless ({same}/{len(j2k)} decode to the same image); "
          f"{rounds} rounds")
    _print_times(*_time_methods(j2k, methods, STEPS, rounds, png, size))


def _cut_csv(path: Path, rows: int) -> int:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[: rows + 1]))
    return min(rows, len(lines) - 1)


def bench_labels(work: Path, rows: int) -> None:
    root = work / "kaggle"
    n = int(rows / 4.2) + 1  # the synth draws about 4.4 csv rows per image
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "medgrounder.synth", "vindr", "--layout", "kaggle", "--out", str(root),
                    "--n", str(n), "--seed", "0", "--test-frac", "0", "--min-side", "32", "--max-side", "48",
                    "--workers", "2"], check=True, stdout=subprocess.DEVNULL)
    got = _cut_csv(root / "train.csv", rows)
    print(f"\nKaggle-layout train.csv: {got} rows (synth command, {n} images, "
          f"{time.perf_counter() - start:.1f} s)")

    t0 = time.perf_counter()
    labels = parse_kaggle(root)
    t1 = time.perf_counter()
    ids = labels.kept_ids()
    sizes, missing, unreadable = read_sizes(root, "train", ids)
    t2 = time.perf_counter()
    paths = {i: str(dicom_path(root, "train", i)) for i in sizes}
    records, report = build_records(labels, sizes, paths)
    answers = [identify_answer((c, to_grid(b, r.width, r.height)) for c, b in r.findings) for r in records]
    t3 = time.perf_counter()
    print(f"  parse csv ({len(labels.readings)} images)                   {t1 - t0:8.2f} s")
    print(f"  DICOM header reads ({len(ids)} files)            {t2 - t1:8.2f} s")
    print(f"  records: conflicts, clip, dedup, answers       {t3 - t2:8.2f} s")
    print(f"  label building, total                          {t3 - t0:8.2f} s  (target <= 15 s)")
    print(f"  {len(records)} images, {report['removed_conflicts']} removed for reader conflicts, "
          f"{report['boxes_raw']} -> {report['boxes_dedup']} boxes, {len(answers)} answers, "
          f"{len(missing) + len(unreadable)} files missing or unreadable")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16, help="full-size DICOMs (part 1)")
    ap.add_argument("--size", type=int, default=448, help="cache image side")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--compressed", type=int, default=4, help="of them also as JPEG 2000 (0 skips it)")
    ap.add_argument("--compressed-rounds", type=int, default=3, help="rounds for those (a decode takes ~1 s)")
    ap.add_argument("--rows", type=int, default=67914, help="train.csv rows (part 2); 0 skips it")
    ap.add_argument("--workdir", help="keep the synthetic data here (default: a temporary dir)")
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                    help="time images by this process's CPU time (default) or by wall time")
    args = ap.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench_images(work, args.n, args.size, args.rounds, args.compressed, args.compressed_rounds)
        if args.rows:
            bench_labels(work, args.rows)


if __name__ == "__main__":
    main()
