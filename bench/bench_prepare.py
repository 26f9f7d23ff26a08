"""``prepare``'s per-image path vs the LiteGPT appendix code; label building at Kaggle size.

    python bench/bench_prepare.py [--n 16] [--size 448] [--rounds 5] [--rows 67914] [--workdir DIR]

Part 1 writes ``--n`` full-size synthetic DICOMs (2500-3000 pixels a side) with the synth code
and times, one image at a time in this one process (one core), interleaved over ``--rounds``
rounds (the per-image minimum is kept):

- pydicom's raw pixel decode alone (``dcmread`` + ``pixel_array``);
- the LiteGPT appendix A.1 code (float64 windowing, verbatim), its RGB conversion and a bilinear
  resize to ``--size`` (the baseline);
- ``prepare``'s path: decode + window + resize (``load_dicom_uint8`` + ``resize_square``), and
  the whole per-image job (``prepare_image``: that plus the PNG write).

The first ``--compressed`` images are also re-encoded as JPEG 2000 lossless and timed the same
way: there decoding does real work, where an uncompressed file's decode is about one copy.

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

from medgrounder.data.boxes import to_grid
from medgrounder.data.dicom import load_dicom_uint8
from medgrounder.data.prompts import identify_answer
from medgrounder.data.vindr import build_records, dicom_path, parse_kaggle, read_sizes
from medgrounder.prepare import prepare_image, resize_square
from medgrounder.synth import synth_vindr


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


def prepare_array(path: str, size: int) -> np.ndarray:
    return resize_square(load_dicom_uint8(path), size)


def _timed(fn, *args) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def _time_methods(paths: list[str], methods: dict, rounds: int, png: Path) -> dict[str, float]:
    """Mean over images of each method's fastest of ``rounds`` runs, in ms.

    Each round runs every method over all images in turn: a method meets the allocator state it
    leaves itself, as in a real run (a float64 baseline before it would otherwise hand it freshly
    unmapped memory to fault in), and the rounds spread background load over all methods."""
    best = {m: [np.inf] * len(paths) for m in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            for i, path in enumerate(paths):
                png.unlink(missing_ok=True)  # prepare_image skips finished images
                best[name][i] = min(best[name][i], _timed(fn, path))
    return {m: 1000 * float(np.mean(v)) for m, v in best.items()}


def _print_times(ms: dict[str, float]) -> None:
    print(f"  pydicom decode alone (dcmread + pixel_array)   {ms['decode']:8.1f} ms/image")
    print(f"  LiteGPT appendix (float64) + RGB + resize      {ms['litegpt']:8.1f} ms/image")
    print(f"  prepare: decode + window + resize              {ms['prepare']:8.1f} ms/image")
    if "job" in ms:
        print(f"  prepare: whole job incl. PNG write             {ms['job']:8.1f} ms/image")
        print(f"  speed-up vs LiteGPT, whole job                 {ms['litegpt'] / ms['job']:8.2f}x  (target >= 3x per core)")
    print(f"  speed-up vs LiteGPT, decode + window + resize  {ms['litegpt'] / ms['prepare']:8.2f}x")
    over = ms["prepare"] / ms["decode"] - 1
    print(f"  decode + window + resize over pydicom decode   {100 * over:+8.1f} %  (target <= +30 %)")


def bench_images(work: Path, n: int, size: int, rounds: int, compressed: int) -> None:
    root = work / "full_size"
    start = time.perf_counter()
    synth_vindr(root, n=n, seed=0, test_frac=0.0, min_side=2500, max_side=3000)
    paths = sorted(str(p) for p in (root / "train").glob("*.dicom"))
    shapes = [pydicom.dcmread(p, stop_before_pixels=True) for p in paths]
    pixels = np.mean([ds.Rows * ds.Columns for ds in shapes]) / 1e6
    print(f"{len(paths)} synthetic DICOMs (uncompressed), {pixels:.1f} Mpixel on average, written in "
          f"{time.perf_counter() - start:.1f} s; cache size {size}; {rounds} rounds, one process")

    same = sum(np.array_equal(load_dicom_uint8(p), load_dicom_uint8(p, fast=False)) for p in paths)
    paper = sum(np.array_equal(np.asarray(litegpt_appendix(p))[..., 0], load_dicom_uint8(p, "litegpt"))
                for p in paths)
    png = work / "one.png"
    methods = {
        "decode": pydicom_decode,
        "litegpt": lambda p: litegpt_baseline(p, size),
        "prepare": lambda p: prepare_array(p, size),
        "job": lambda p: prepare_image((p, str(png), size, "dicom")),
    }
    _print_times(_time_methods(paths, methods, rounds, png))
    print(f"  fast windowing identical to the float reference: {same}/{len(paths)} images; "
          f"windowing='litegpt' identical to the appendix code: {paper}/{len(paths)}")
    if compressed:
        bench_compressed(work, paths[:compressed], methods, rounds, png)


def bench_compressed(work: Path, paths: list[str], methods: dict, rounds: int, png: Path) -> None:
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
    print(f"\nThe first {len(j2k)} of them as JPEG 2000 lossless ({same}/{len(j2k)} decode to the same image)")
    _print_times(_time_methods(j2k, {k: v for k, v in methods.items() if k != "job"}, rounds, png))


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
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compressed", type=int, default=4, help="of them also as JPEG 2000 (0 skips it)")
    ap.add_argument("--rows", type=int, default=67914, help="train.csv rows (part 2); 0 skips it")
    ap.add_argument("--workdir", help="keep the synthetic data here (default: a temporary dir)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        bench_images(work, args.n, args.size, args.rounds, args.compressed)
        if args.rows:
            bench_labels(work, args.rows)


if __name__ == "__main__":
    main()
