"""Scored boxes in the formats detector tools read: COCO (a results list and the matching
ground-truth file, for pycocotools' ``COCOeval``) and a Kaggle VinBigData submission csv.

Inputs as in :mod:`medgrounder.metrics.detection`: ``(image, class, box, score)`` predictions and
``(image, class, box)`` ground truth, boxes ``(x1, y1, x2, y2)`` in pixels, ``image`` a key of
``images``.
"""

from __future__ import annotations

import csv
import io
import math
from collections import Counter
from collections.abc import Mapping, Sequence

__all__ = ["coco_files", "kaggle_csv", "read_kaggle_csv"]


def _xywh(box: Sequence[float]) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def coco_files(images: Sequence[Mapping], categories: Sequence[str], gts, preds) -> tuple[dict, list[dict]]:
    """``(ground truth, results)`` as COCO JSON objects.

    ``images``: one mapping per image with ``key`` (the key the boxes use), ``width``, ``height``
    and optionally ``file_name``; COCO image ids are 1-based positions in ``images``. Category
    ids are 1-based positions in ``categories``. Boxes become ``bbox = [x, y, w, h]``
    (``w = x2 - x1``), ground truth with ``area = w * h`` and ``iscrowd = 0``. Results keep the
    predictions' order: ``{image_id, category_id, bbox, score}``.
    """
    image_id = {im["key"]: i for i, im in enumerate(images, start=1)}
    cat_id = {c: i for i, c in enumerate(categories, start=1)}
    gt = {
        "info": {"description": "medgrounder ground truth"},
        "images": [{"id": image_id[im["key"]], "width": im["width"], "height": im["height"],
                    "file_name": str(im.get("file_name", im["key"]))} for im in images],
        "categories": [{"id": i, "name": c} for c, i in cat_id.items()],
        "annotations": [],
    }
    for n, (image, cls, box) in enumerate(gts, start=1):
        b = _xywh(box)
        gt["annotations"].append({"id": n, "image_id": image_id[image], "category_id": cat_id[cls], "bbox": b,
                                  "area": b[2] * b[3], "iscrowd": 0})
    results = [{"image_id": image_id[image], "category_id": cat_id[cls], "bbox": _xywh(box), "score": float(score)}
               for image, cls, box, score in preds]
    return gt, results


def kaggle_csv(image_ids: Mapping, preds, class_ids: Mapping[str, int]) -> tuple[str, Counter]:
    """A VinBigData submission: ``image_id,PredictionString``, one line per image of
    ``image_ids`` (box key -> Kaggle ``image_id``, in that order), each prediction
    ``class_id score x_min y_min x_max y_max`` in pixels, joined by spaces, in the predictions'
    order. Numbers are written as Python's shortest round-trip repr (integers without ``.0``).
    Predictions of a class outside ``class_ids`` are dropped; returns the csv text and the
    dropped counts per class."""
    strings: dict = {k: [] for k in image_ids}
    dropped: Counter = Counter()
    for image, cls, box, score in preds:
        if cls not in class_ids:
            dropped[cls] += 1
            continue
        strings[image].append(" ".join([str(class_ids[cls]), *(_num(v) for v in (score, *box))]))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["image_id", "PredictionString"])
    for k, name in image_ids.items():
        w.writerow([name, " ".join(strings[k])])
    return buf.getvalue(), dropped


def _num(v: float) -> str:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"cannot write a non-finite number {v!r} into a submission")
    return str(int(v)) if v.is_integer() and abs(v) < 2**53 else repr(v)


def read_kaggle_csv(text: str) -> dict[str, list[tuple[int, float, float, float, float, float]]]:
    """Parse a submission back: ``image_id -> [(class_id, score, x_min, y_min, x_max, y_max)]``."""
    rows = list(csv.reader(io.StringIO(text)))
    if not rows or rows[0] != ["image_id", "PredictionString"]:
        raise ValueError("a VinBigData submission starts with the header image_id,PredictionString")
    out = {}
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != 2:
            raise ValueError(f"line {n}: expected image_id,PredictionString, got {row!r}")
        parts = row[1].split()
        if len(parts) % 6:
            raise ValueError(f"line {n}: a prediction is 6 numbers (class_id score x_min y_min x_max y_max)")
        out[row[0]] = [(int(parts[i]), *(float(v) for v in parts[i + 1 : i + 6])) for i in range(0, len(parts), 6)]
    return out
