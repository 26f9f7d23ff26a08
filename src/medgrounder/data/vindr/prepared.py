"""VinDr-CXR prepared once: DICOM -> resized 8-bit image cache + ``annotations.jsonl`` (design §6).

:func:`prepare_vindr` (``python -m medgrounder.prepare vindr``) writes::

    DIR/prepare.json                      the settings; a re-run with other settings stops
    DIR/images/<split>/<image_id>.png     8-bit grey, N x N (aspect not kept, as LiteGPT); text
                                          chunks original_width / original_height
    DIR/annotations.jsonl                 one object per image, sorted by (split, image_id):
                                          image_id, split, image (path relative to DIR), dicom
                                          (relative to RAW), width, height (original pixels),
                                          findings [[class, x1, y1, x2, y2], ...] (original
                                          pixels, fused by label_fusion), global_labels,
                                          no_finding; agreement [a, ...] per finding (only
                                          label_fusion=wbf on a multi-reader split)
    DIR/report.json                       RAW, counts, reader conflicts, missing and unreadable
                                          files, per split the label fusion used and the boxes
                                          by class before and after it

Every pixel is windowed as :func:`~medgrounder.data.vindr.dicom.load_dicom_uint8` windows it; the
8-bit values are averaged over integer boxes to between N and 2N - 1 a side (Pillow's
``Image.reduce``), and Pillow's bilinear filter finishes at N (horizontal pass first, as Pillow's
``resize`` up to version 12): :func:`resize_square` of the full-size windowed image, bit for
bit, within a grey level of ``Image.resize((N, N), BILINEAR, reducing_gap=1)``. The windowing
and the box reduction run as one pass over the stored values
(:func:`~medgrounder.data.vindr.dicom.load_dicom_reduced`), so the full-size 8-bit image is never
made, and the bilinear passes vectorise (:mod:`medgrounder.data.vindr.resample`). On full-size
uncompressed films the whole path (header, pixels, window, resize) costs about 5 % more than
pydicom's decode alone, where windowing every pixel and then Pillow's resize cost 190 % more
(``bench/bench_prepare.py``). The result is 0.3 grey levels on average from Pillow's
full-support bilinear filter. The boxes stay in original pixels; the 0-100 grid is computed
from the header's width and height.

A run is resumable and safe to kill: every file is written under a temporary name and renamed
into place (:mod:`medgrounder.core.io`), finished images are skipped, the temporary files of a
killed run are removed.
Files that cannot be read (not DICOM, no pixel data, no transfer syntax, truncated, a header
value that is not a number, or any other error while decoding or writing one image) are listed in
the report with the reason and the exception type and left out; they never stop the run. Image
ids that could name a path outside the split folder (``/``, ``..``) are refused the same way
(``invalid_ids``). A finished image is reused only when its ``source`` text chunk (the DICOM's
resolved path, size and modification time) matches the file it would be decoded from now, so a
cache re-pointed at another root or an edited file is decoded again. Before any image is
decoded the root, the layout (detected when not given), every split's csv files (present, UTF-8,
parseable) and the output folder are checked, and the run stops with one line naming the problem.

"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin
from tqdm.auto import tqdm

from medgrounder.core.io import atomic_write, atomic_write_json, atomic_write_text
from medgrounder.data.vindr.dicom import (
    WINDOWINGS,
    DicomReadError,
    load_dicom_reduced,
    reduce_factors,
)
from medgrounder.data.vindr.layout import (
    LAYOUTS,
    SPLITS,
    detect_layout,
    dicom_path,
    label_files,
)
from medgrounder.data.vindr.records import VinDrRecord, build_records, fusion_settings, parse_labels
from medgrounder.data.vindr.resample import bilinear, box_reduce

SETTINGS_FILE = "prepare.json"
ANNOTATIONS_FILE = "annotations.jsonl"
REPORT_FILE = "report.json"
FORMAT_VERSION = 2  # 2: box reduction to N..2N-1, then bilinear; 1: Pillow's resize, reducing_gap 2
PNG_COMPRESS_LEVEL = 1  # fast; level 6 is 4x slower for a few percent smaller files
#: the label settings of a cache written before label_fusion existed (it de-duplicated)
LEGACY_FUSION = {k: v for k, v in fusion_settings().items() if k not in ("dedup_iou", "dedup_mode")}

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Files


def _remove_stale_tmp(out: Path) -> int:
    """Delete the temporary files (:func:`~medgrounder.core.io.temporary_name`) left by a killed
    run; return how many."""
    stale = [p for p in out.glob("images/*/.*.tmp")] + [p for p in out.glob(".*.tmp")]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """``uint8 [H, W]`` -> ``uint8 [size, size]``: Pillow's box reduction to between ``size`` and
    ``2 * size - 1`` a side, then Pillow's bilinear filter (module docstring)."""
    height, width = img.shape
    return resize_reduced(box_reduce(img, *reduce_factors(width, height, size)), width, height, size)


def resize_reduced(img: np.ndarray, width: int, height: int, size: int) -> np.ndarray:
    """The box reduction of a ``width x height`` image (:func:`~medgrounder.data.vindr.dicom.reduce_factors`)
    -> ``uint8 [size, size]``: the rest of :func:`resize_square` (bilinear over the box that
    keeps the original geometry, partial edge boxes included, as Pillow's own resize does)."""
    kx, ky = reduce_factors(width, height, size)
    return bilinear(img, size, size, (0, 0, width / kx, height / ky))


def load_cache_image(src: str, size: int, windowing: str = "dicom") -> tuple[np.ndarray, int, int]:
    """A DICOM file -> ``(uint8 [size, size], original width, original height)``; equal to
    ``resize_square(load_dicom_uint8(src, windowing), size)``."""
    img, width, height = load_dicom_reduced(src, size, windowing)
    return resize_reduced(img, width, height, size), width, height


def _png_size(path: Path, source: str) -> tuple[int, int] | None:
    """Original ``(width, height)`` stored in a finished cache image decoded from ``source``
    (:func:`source_signature`), or ``None`` if unusable or from another file."""
    try:
        with Image.open(path) as im:
            if im.text.get("source") != source:
                return None
            return int(im.text["original_width"]), int(im.text["original_height"])
    except (OSError, KeyError, ValueError, SyntaxError):
        return None


def source_signature(src: str | Path) -> str:
    """The DICOM a cache image comes from: resolved path, size in bytes, modification time (ns)."""
    st = os.stat(src)
    return json.dumps([str(Path(src).resolve()), st.st_size, st.st_mtime_ns])


def prepare_image(job: tuple[str, str, int, str]) -> tuple[str, int, int, str]:
    """One image: ``(dicom, png, size, windowing)`` -> ``(status, width, height, reason)``.

    ``status`` is ``written``, ``exists`` (finished by an earlier run from the same file) or
    ``unreadable`` (with the reason). Runs in the worker processes; never raises, so one bad
    file of a long run costs that file only.
    """
    src, dst, size, windowing = job
    try:
        return _prepare_image(src, Path(dst), size, windowing)
    except DicomReadError as e:
        return "unreadable", 0, 0, e.reason
    except Exception as e:  # whatever else one file makes a decoder or the writer raise
        return "unreadable", 0, 0, f"{type(e).__name__}: {e}"


def _prepare_image(src: str, dst: Path, size: int, windowing: str) -> tuple[str, int, int, str]:
    source = source_signature(src)
    if dst.is_file() and (wh := _png_size(dst, source)) is not None:
        return "exists", *wh, ""
    img, width, height = load_cache_image(src, size, windowing)
    info = PngImagePlugin.PngInfo()
    info.add_text("original_width", str(width))
    info.add_text("original_height", str(height))
    info.add_text("source", source)
    atomic_write(dst, lambda tmp: Image.fromarray(img).save(
        tmp, format="PNG", pnginfo=info, compress_level=PNG_COMPRESS_LEVEL))
    return "written", width, height, ""


def _run(fn: Callable, jobs: list, workers: int, desc: str) -> list:
    """``[fn(job) for job in jobs]`` in order, on ``workers`` processes, with a progress bar."""
    bar = tqdm(total=len(jobs), desc=desc, unit="img")
    results = []
    try:
        if workers <= 1 or len(jobs) <= 1:
            for job in jobs:
                results.append(fn(job))
                bar.update()
        else:
            chunk = max(1, min(8, len(jobs) // (4 * workers)))
            with ProcessPoolExecutor(workers) as pool:
                for result in pool.map(fn, jobs, chunksize=chunk):
                    results.append(result)
                    bar.update()
    finally:
        bar.close()
    return results


# --------------------------------------------------------------------------------------------
# The prepared format


def cache_image(split: str, image_id: str) -> str:
    """A cache PNG, relative to the prepared dir."""
    return f"images/{split}/{image_id}.png"


def _relative_dicom(record: VinDrRecord) -> str:
    return f"{record.split}/{Path(record.path).name}"


def annotation_line(record: VinDrRecord, image: str) -> str:
    """One ``annotations.jsonl`` line (no newline); ``image`` is relative to the output dir."""
    row = {
        "image_id": record.image_id,
        "split": record.split,
        "image": image,
        "dicom": _relative_dicom(record),
        "width": record.width,
        "height": record.height,
        "findings": [[name, *box] for name, box in record.findings],
        "global_labels": list(record.global_labels),
        "no_finding": record.no_finding,
    }
    if record.agreement is not None:  # only wbf writes it: other caches stay byte for byte as before
        row["agreement"] = list(record.agreement)
    return json.dumps(row, ensure_ascii=False)


def annotations_text(records: Iterable[VinDrRecord], images: dict[tuple[str, str], str]) -> str:
    """The whole ``annotations.jsonl``: records sorted by (split, image_id)."""
    ordered = sorted(records, key=lambda r: (SPLITS.index(r.split), r.image_id))
    return "".join(annotation_line(r, images[r.split, r.image_id]) + "\n" for r in ordered)


def is_prepared(root: str | Path) -> bool:
    """Whether ``root`` holds prepared output (an ``annotations.jsonl``)."""
    return (Path(root) / ANNOTATIONS_FILE).is_file()


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def read_prepared(root: str | Path) -> tuple[dict, dict, dict[str, list[VinDrRecord]]]:
    """``(settings, report, records by split)`` of a prepared dir. A record's ``image`` is its
    cache PNG, its ``path`` the source DICOM under the raw root named in the report."""
    root = Path(root)
    settings, report = _read_json(root / SETTINGS_FILE), _read_json(root / REPORT_FILE)
    raw = Path(report.get("root", "."))
    by_split: dict[str, list[VinDrRecord]] = {s: [] for s in SPLITS}
    with open(root / ANNOTATIONS_FILE, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                a = json.loads(line)
                agreement = a.get("agreement")
                rec = VinDrRecord(a["image_id"], a["split"], str(raw / a["dicom"]), int(a["width"]),
                                  int(a["height"]), [(n, tuple(map(float, b))) for n, *b in a["findings"]],
                                  list(a["global_labels"]), image=str(root / a["image"]),
                                  no_finding=a.get("no_finding"),
                                  agreement=None if agreement is None else [float(v) for v in agreement])
                if rec.agreement is not None and len(rec.agreement) != len(rec.findings):
                    raise ValueError(f"{len(rec.agreement)} agreement values for {len(rec.findings)} findings")
            except (ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{root / ANNOTATIONS_FILE}, line {line_no}: {e}") from None
            by_split.setdefault(rec.split, []).append(rec)
    return settings, report, by_split


# --------------------------------------------------------------------------------------------
# VinDr-CXR


def _check_settings(out: Path, settings: dict) -> None:
    """Record the settings of a new output dir; refuse to mix different ones into an old one."""
    path = out / SETTINGS_FILE
    if path.is_file():
        old = json.loads(path.read_text())
        if "label_fusion" not in old:  # written before label fusion was a setting: it de-duplicated
            old = {**old, **LEGACY_FUSION}
        if old != settings:
            diff = {k: (old.get(k), v) for k, v in settings.items() if old.get(k) != v}
            raise ValueError(f"{out} was prepared with other settings {diff} (old, new): "
                             "use another --out or delete it")
        return
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, settings)


def fusion_summary(split_report: dict) -> dict:
    """The label-fusion part of a split's report: method configured and used, boxes before and
    after, by class."""
    keys = ("label_fusion", "fusion_applied", "fusion_skipped", "max_readers", "boxes_raw", "boxes_dedup",
            "removed_below_min_votes", "boxes_raw_by_class", "boxes_by_class")
    return {k: split_report[k] for k in keys if k in split_report}


def log_fusion(split_report: dict) -> None:
    """Log how label fusion changed one split's ground-truth boxes, by class."""
    f = fusion_summary(split_report)
    if "fusion_applied" not in f:  # a report written before label fusion was a setting
        return
    raw, fused = f["boxes_raw_by_class"], f["boxes_by_class"]
    log.info("VinDr %s labels: %s%s, %d -> %d boxes (%s)", split_report["split"], f["fusion_applied"],
             f" ({f['fusion_skipped']})" if f["fusion_skipped"] else "", f["boxes_raw"], f["boxes_dedup"],
             ", ".join(f"{n} {raw.get(n, 0)} -> {fused.get(n, 0)}" for n in raw))


def resolve_layout(root: Path, layout: str = "auto") -> str:
    """``layout``, or the one ``root`` holds for ``auto``; ``ValueError`` saying which to pass
    when the folder does not hold the layout asked for."""
    if layout not in ("auto", *LAYOUTS):
        raise ValueError(f"layout must be one of {('auto', *LAYOUTS)}, got {layout!r}")
    if not root.is_dir():
        raise ValueError(f"root {root} is not a directory" if root.exists() else f"root {root} does not exist")
    found = detect_layout(root)
    if found is None:
        raise ValueError(f"{root} holds neither annotations/ (the PhysioNet layout) nor train.csv "
                         "(the Kaggle layout): is --root the downloaded dataset?")
    if layout != "auto" and layout != found:
        names = {"physionet": "PhysioNet layout (annotations/)", "kaggle": "Kaggle layout (train.csv, no annotations/)"}
        raise ValueError(f"{root} looks like the {names[found]}, not {layout}: pass --layout {found}")
    return found


def check_label_files(root: Path, layout: str) -> None:
    """Every csv of ``layout`` is present and UTF-8, before anything is decoded."""
    for name in label_files(layout):
        path = root / name
        if not path.is_file():
            raise ValueError(f"{path} does not exist (the {layout} layout needs {', '.join(label_files(layout))})")
        try:
            path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as e:
            raise ValueError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}): "
                             "save it as UTF-8") from None


def _make_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ValueError(f"out {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"cannot create out {out} ({e.strerror or e})") from None


def prepare_vindr(root: str | Path, out: str | Path, size: int = 448, workers: int = 1,
                  windowing: str = "dicom", layout: str = "auto", dedup_iou: float = 0.5,
                  dedup_mode: str = "medoid", label_fusion: str = "dedup", fusion_iou: float = 0.5,
                  fusion_conf_type: str = "avg", min_votes: int | None = None) -> dict:
    """Prepare VinDr-CXR from ``root`` (PhysioNet or Kaggle layout; ``auto``: the one it holds)
    into ``out``; return the report (also written to ``out/report.json``). The label settings
    are those of :func:`~medgrounder.data.vindr.records.build_records`; all of them are recorded
    in ``prepare.json``, and a run must match the ones its ``label_fusion`` uses."""
    fusion = fusion_settings(label_fusion, dedup_iou, dedup_mode, fusion_iou, fusion_conf_type, min_votes)
    if windowing not in WINDOWINGS:
        raise ValueError(f"windowing must be one of {WINDOWINGS}, got {windowing!r}")
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    start = time.perf_counter()
    root, out = Path(root), Path(out)
    layout = resolve_layout(root, layout)
    check_label_files(root, layout)
    splits = ("train",) if layout == "kaggle" else SPLITS
    labels_by_split = {split: parse_labels(root, split, layout) for split in splits}  # every csv before any image
    _make_out(out)
    settings = {"dataset": "vindr", "layout": layout, "size": size, "windowing": windowing,
                **fusion, "format": FORMAT_VERSION}
    _check_settings(out, settings)
    stale = _remove_stale_tmp(out)

    report: dict = {**settings, "root": str(root.resolve()), "images": 0, "written": 0, "existing": 0, "stale_tmp_removed": stale,
                    "removed_conflicts": 0, "missing_files": [], "unreadable_files": [], "invalid_ids": [],
                    "splits": {}}
    records: list[VinDrRecord] = []
    images: dict[tuple[str, str], str] = {}
    for split, labels in labels_by_split.items():
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        todo = []
        # The label reader drops rows whose id is not a plain name (records.unsafe ids): listed here.
        report["invalid_ids"] += [{"split": split, **bad} for bad in labels.bad_ids]
        for iid in labels.kept_ids():
            if dicom_path(root, split, iid).is_file():
                todo.append(iid)
            else:
                report["missing_files"].append({"image_id": iid, "split": split})
        jobs = [(str(dicom_path(root, split, i)), str(out / cache_image(split, i)), size, windowing)
                for i in todo]
        results = _run(prepare_image, jobs, workers, f"prepare vindr {split}")
        sizes = {}
        for iid, (status, width, height, reason) in zip(todo, results, strict=True):
            if status == "unreadable":
                report["unreadable_files"].append(
                    {"image_id": iid, "split": split, "file": dicom_path(root, split, iid).relative_to(root).as_posix(),
                     "reason": reason})
                continue
            report["written" if status == "written" else "existing"] += 1
            sizes[iid] = (width, height)
            images[split, iid] = cache_image(split, iid)
        split_records, split_report = build_records(
            labels, sizes, {i: str(dicom_path(root, split, i)) for i in sizes}, dedup_iou, dedup_mode,
            label_fusion=label_fusion, fusion_iou=fusion_iou, fusion_conf_type=fusion_conf_type,
            min_votes=min_votes)
        log_fusion(split_report)
        records += split_records
        report["splits"][split] = split_report
        report["removed_conflicts"] += split_report["removed_conflicts"]
        for key in ("removed_bad_rows", "boxes_swapped", "boxes_outside"):  # the csv's repairs
            report[key] = report.get(key, 0) + split_report[key]

    atomic_write_text(out / ANNOTATIONS_FILE, annotations_text(records, images))
    report["images"] = len(records)
    report["seconds"] = round(time.perf_counter() - start, 2)
    atomic_write_json(out / REPORT_FILE, report)
    return report


