"""A synthetic MS-CXR in the layout of :mod:`medgrounder.data.mscxr.layout`: the local
alignment csv and its images as MIMIC-CXR-JPG files, 1-3 images per patient, each with 1-2
findings of the MS-CXR categories whose phrase names what is drawn and where
(:mod:`medgrounder.data.synthetic`). The same seed gives byte-identical files, whatever
``workers``.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import numpy as np

from medgrounder.core.labels import MSCXR_CATEGORIES
from medgrounder.data.mscxr.layout import MSCXR_CSV, MSCXR_HEADER, mimic_jpg_path
from medgrounder.data.synthetic import (
    finding_phrase,
    mimic_cohort,
    plan_chests,
    write_jpgs,
)

MSCXR_SPLIT_P = (("train", 0.7), ("val", 0.1), ("test", 0.2))  # the official column, by patient
FINDINGS_PER_IMAGE_P = (0.7, 0.3)  # 1 or 2 findings (of different categories) in an MS-CXR image


def synth_mscxr(out: str | Path, n: int = 200, seed: int = 0, min_side: int = 320, max_side: int = 512,
                workers: int = 1) -> dict:
    """Write a synthetic MS-CXR to ``out``: :data:`MSCXR_CSV` (design section 5: one row per box;
    rows sharing an image and a phrase are one sample) and its ``n`` images as MIMIC-CXR-JPG
    files under ``out/files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg``, 1-3 images per patient.

    The ``split`` column is an official-style split by patient (7:1:2). Output depends only on
    the arguments other than ``workers``.
    """
    start = time.perf_counter()
    out = Path(out)
    rng = np.random.default_rng([seed, 7])
    plans = plan_chests(rng, n, min_side, max_side, (0.0, *FINDINGS_PER_IMAGE_P))
    ids, image_split = mimic_cohort(rng, n, MSCXR_SPLIT_P)
    rows, jobs = [], []
    for plan, (subject, study, dicom), split in zip(plans, ids, image_split, strict=True):
        path = mimic_jpg_path(subject, study, dicom)
        jobs.append((plan, str(out / path), seed, "mscxr"))
        for category, boxes in plan.findings:
            phrase = finding_phrase(category, boxes, plan.width, plan.height, int(rng.integers(1 << 16)))
            for x1, y1, x2, y2 in boxes:
                rows.append([dicom, category, phrase, int(x1), int(y1), int(x2 - x1), int(y2 - y1),
                             plan.width, plan.height, path, split])
    write_jpgs(jobs, workers)
    with open(out / MSCXR_CSV, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(MSCXR_HEADER)
        writer.writerows(rows)
    samples = {(r[0], r[2]): r[1] for r in rows}
    return {"dataset": "mscxr", "out": str(out), "images": n, "patients": len({subject for subject, _, _ in ids}),
            "samples": len(samples), "boxes": len(rows),
            "categories": {c: list(samples.values()).count(c) for c in MSCXR_CATEGORIES},
            "seconds": round(time.perf_counter() - start, 2)}

