"""VinDr-CXR on disk, written down once for the reader, ``prepare``, the synthetic writer and the
start-up checks.

PhysioNet 1.0.0 layout (design section 5)::

    annotations/annotations_{train,test}.csv    image_id,rad_id,class_name,x_min,y_min,x_max,y_max
    annotations/image_labels_{train,test}.csv   image_id,rad_id,<22 local>,<6 global> (0/1)
    {train,test}/<image_id>.dicom

Kaggle VinBigData layout: ``train.csv`` (``image_id,class_name,class_id,rad_id,x_min,y_min,
x_max,y_max``) and ``{train,test}/<image_id>.dicom``, the test images unlabelled.
"""

from __future__ import annotations

import re
from os import PathLike
from pathlib import Path

from medgrounder.core.labels import GLOBAL_LABELS

SPLITS = ("train", "test")
LAYOUTS = ("physionet", "kaggle")
BOX_COLUMNS = ("x_min", "y_min", "x_max", "y_max")
ANNOTATION_COLUMNS = ("image_id", "rad_id", "class_name", *BOX_COLUMNS)
KAGGLE_COLUMNS = ("image_id", "class_name", "class_id", "rad_id", *BOX_COLUMNS)
#: The official spellings of the 6 global columns of ``image_labels_<split>.csv`` (the reader
#: accepts either through :func:`~medgrounder.core.labels.canonical_global`).
GLOBAL_COLUMNS = {
    "train": ("COPD", "Lung tumor", "Pneumonia", "Tuberculosis", "Other diseases", "No finding"),
    "test": GLOBAL_LABELS,
}
KAGGLE_CSV = "train.csv"


def annotations_csv(split: str) -> str:
    """The box csv of ``split``, relative to the root (PhysioNet)."""
    return f"annotations/annotations_{split}.csv"


def image_labels_csv(split: str) -> str:
    """The image-level label csv of ``split``, relative to the root (PhysioNet)."""
    return f"annotations/image_labels_{split}.csv"


#: What a PhysioNet root holds, in the order the start-up check lists what is missing.
PHYSIONET_FILES = (*map(annotations_csv, SPLITS), *map(image_labels_csv, SPLITS), *SPLITS)


def dicom_path(root: str | PathLike, split: str, image_id: str) -> Path:
    """``<root>/<split>/<image_id>.dicom`` (both layouts)."""
    return Path(root) / split / f"{image_id}.dicom"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def unsafe_image_id(image_id: str) -> str | None:
    """Why ``image_id`` cannot name a file under a split folder (a path separator, ``..``, a
    leading dot, a control character, empty), else ``None``: such an id would make ``prepare``
    read outside the raw root or write outside its output."""
    if not image_id:
        return "empty image_id"
    if "/" in image_id or "\\" in image_id:
        return f"image_id {image_id!r} contains a path separator"
    if image_id.startswith("."):
        return f"image_id {image_id!r} starts with a dot"
    if _CONTROL.search(image_id):
        return f"image_id {image_id!r} contains a control character"
    return None


def detect_layout(root: str | PathLike) -> str | None:
    """``physionet`` (an ``annotations/`` folder), ``kaggle`` (``train.csv``, no ``annotations/``)
    or ``None`` (neither)."""
    root = Path(root)
    if (root / "annotations").is_dir():
        return "physionet"
    if (root / KAGGLE_CSV).is_file():
        return "kaggle"
    return None


def label_files(layout: str) -> tuple[str, ...]:
    """The csv files of ``layout``, relative to the root."""
    if layout == "kaggle":
        return (KAGGLE_CSV,)
    return tuple(f for s in SPLITS for f in (annotations_csv(s), image_labels_csv(s)))
