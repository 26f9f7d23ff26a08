"""The three caption corpora of PFMVG stage 1, synthetic, in the layouts of
:mod:`medgrounder.data.captions.layout` under ``roco/``, ``imageclef2022/`` and ``mimic-cxr/``.
Each caption states every drawn finding (of the MS-CXR categories,
:mod:`medgrounder.data.synthetic`) with its location, or that there is none, in the corpus's own
style. The same seed gives byte-identical files, whatever ``workers``.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from medgrounder.data.captions.layout import (
    CLEF_COLUMNS,
    CLEF_PARTS,
    MIMIC_SPLIT_COLUMNS,
    MIMIC_SPLIT_CSV,
    MIMIC_SPLITS,
    ROCO_CAPTIONS,
    ROCO_FOLDERS,
    clef_captions,
    clef_image,
    roco_folder,
    roco_image,
)
from medgrounder.data.mscxr.layout import mimic_jpg_path, mimic_report_path
from medgrounder.data.synthetic import (
    ChestPlan,
    finding_phrase,
    mimic_cohort,
    pick,
    plan_chests,
    write_jpgs,
)

ROCO_SPLITS = tuple(ROCO_FOLDERS.values())
CAPTION_SPLIT_P = (0.7, 0.1, 0.2)
CAPTION_COUNT_P = (0.25, 0.5, 0.25)  # 0, 1 or 2 findings
NON_RADIOLOGY_FRAC = 0.15  # ROCO images written to the non-radiology subset


def _finding_sentences(plan: ChestPlan) -> list[str]:
    return [finding_phrase(c, boxes, plan.width, plan.height, k) for k, (c, boxes) in enumerate(plan.findings)]


def _join(items: Sequence[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def roco_caption(plan: ChestPlan) -> str:
    found = _finding_sentences(plan)
    return f"Chest X-ray showing {_join(found)}." if found else "Chest X-ray with no acute abnormality."


def clef_caption(plan: ChestPlan) -> str:
    found = _finding_sentences(plan)
    return f"Chest radiograph demonstrating {_join(found)}" if found else "Normal chest radiograph"


def mimic_report(plan: ChestPlan) -> str:
    """A free-text report in MIMIC-CXR's layout: header lines, then FINDINGS and IMPRESSION."""
    found = _finding_sentences(plan)
    if found:
        findings = " ".join(f"There is {s}." for s in found)
        impression = _join(found).capitalize() + "."
    else:
        findings = "The lungs are clear. The cardiomediastinal silhouette is normal."
        impression = "No acute cardiopulmonary process."
    return ("                                 FINAL REPORT\n"
            " EXAMINATION:  CHEST (PA AND LAT)\n \n"
            " INDICATION:  ___ with shortness of breath.\n \n"
            " COMPARISON:  None.\n \n"
            f" FINDINGS:\n \n {findings}\n \n"
            f" IMPRESSION:\n \n {impression}\n")


def _assign(n: int, names: Sequence[str], fractions: Sequence[float]) -> list[str]:
    """The first ``round(f * n)`` items to the first name and so on (the last takes the rest)."""
    out, start = [], 0
    for k, name in enumerate(names):
        count = n - start if k == len(names) - 1 else round(fractions[k] * n)
        out += [name] * count
        start += count
    return out


def _write_tsv(path: Path, rows: Iterable[Sequence[str]], header: Sequence[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        if header:
            f.write("\t".join(header) + "\n")
        for row in rows:
            f.write("\t".join(row) + "\n")


def synth_captions(out: str | Path, n: int = 200, seed: int = 0, min_side: int = 256, max_side: int = 448,
                   workers: int = 1) -> dict:
    """Write the three caption corpora of PFMVG stage 1, ``n`` images each, in their layouts:

    - ``roco/data/{train,validation,test}/{radiology,non-radiology}/captions.txt`` (TAB: id,
      caption) and ``images/<ROCO_xxxxx>.jpg`` beside it;
    - ``imageclef2022/caption_prediction_{train,valid}.csv`` (TAB, header ``ID caption``) and
      ``{train,valid}/<ID>.jpg``;
    - ``mimic-cxr/``: ``mimic-cxr-2.0.0-split.csv`` (``dicom_id,study_id,subject_id,split``),
      the reports ``files/pXX/pXXXXXXXX/sYYYYYYYY.txt`` and the images
      ``files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``.
    """
    start = time.perf_counter()
    out = Path(out)
    rng = np.random.default_rng([seed, 11])
    jobs = []
    # ROCO
    plans = plan_chests(rng, n, min_side, max_side, CAPTION_COUNT_P)
    splits = _assign(n, ROCO_SPLITS, CAPTION_SPLIT_P)
    other = pick(rng, range(n), NON_RADIOLOGY_FRAC)
    roco_rows: dict[tuple[str, str], list] = {}
    for plan, split in zip(plans, splits, strict=True):
        rid = f"ROCO_{plan.index + 1:05d}"
        subset = "non-radiology" if plan.index in other else "radiology"
        caption = "Clinical photograph of the skin." if subset == "non-radiology" else roco_caption(plan)
        folder = roco_folder(out / "roco", split, subset)
        roco_rows.setdefault((split, subset), []).append([rid, f" {caption}"])
        jobs.append((plan, str(roco_image(folder, rid)), seed, "roco"))
    for (split, subset), rows in roco_rows.items():
        _write_tsv(roco_folder(out / "roco", split, subset) / ROCO_CAPTIONS, rows)
    # ImageCLEF 2022 caption prediction
    plans = plan_chests(rng, n, min_side, max_side, CAPTION_COUNT_P)
    splits = _assign(n, CLEF_PARTS, (0.8, 0.2))
    clef_rows: dict[str, list] = {s: [] for s in CLEF_PARTS}
    for plan, split in zip(plans, splits, strict=True):
        cid = f"ImageCLEFmedCaption_2022_{split}_{plan.index + 1:06d}"
        clef_rows[split].append([cid, clef_caption(plan)])
        jobs.append((plan, str(clef_image(out / "imageclef2022", split, cid)), seed, "clef"))
    for split, rows in clef_rows.items():
        _write_tsv(clef_captions(out / "imageclef2022", split), rows, CLEF_COLUMNS)
    # MIMIC-CXR reports + JPG, one image per study
    plans = plan_chests(rng, n, min_side, max_side, CAPTION_COUNT_P)
    ids, image_split = mimic_cohort(rng, n, tuple(zip(MIMIC_SPLITS, CAPTION_SPLIT_P, strict=True)))
    split_rows = []
    for plan, (subject, study, dicom), split in zip(plans, ids, image_split, strict=True):
        jobs.append((plan, str(out / "mimic-cxr" / mimic_jpg_path(subject, study, dicom)), seed, "mimic"))
        report = out / "mimic-cxr" / mimic_report_path(subject, study)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(mimic_report(plan), encoding="utf-8")
        split_rows.append([dicom, study, subject, split])
    with open(out / "mimic-cxr" / MIMIC_SPLIT_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MIMIC_SPLIT_COLUMNS)
        writer.writerows(split_rows)
    write_jpgs(jobs, workers)
    return {"dataset": "captions", "out": str(out), "images_per_corpus": n,
            "roco_non_radiology": len(other), "seconds": round(time.perf_counter() - start, 2)}
