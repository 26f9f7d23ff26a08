"""The caption corpora of PFMVG stage 1 on disk, written down once for the readers
(:mod:`medgrounder.data.captions.sources`), the synthetic writer and the start-up checks:

- ROCO: ``<root>/data/{train,validation,test}/{radiology,non-radiology}/captions.txt`` (TAB: id,
  caption) with ``images/<id>.jpg`` beside it;
- ImageCLEF 2022 caption prediction: ``<root>/caption_prediction_{train,valid}.csv`` (TAB, header
  ``ID caption``) with ``{train,valid}/<ID>.jpg``;
- MIMIC-CXR: MIMIC-CXR-JPG's split csv (``dicom_id, study_id, subject_id, split``, also shipped
  gzipped), the images and reports of :mod:`medgrounder.data.mscxr.layout`.
"""

from __future__ import annotations

from pathlib import Path

#: ROCO's folder of each of our splits (``train | val | test``).
ROCO_FOLDERS = {"train": "train", "val": "validation", "test": "test"}
ROCO_SUBSETS = ("radiology", "non-radiology")
ROCO_CAPTIONS = "captions.txt"
CLEF_PARTS = ("train", "valid")  # the released caption files (the test captions never were)
CLEF_COLUMNS = ("ID", "caption")
MIMIC_SPLIT_CSV = "mimic-cxr-2.0.0-split.csv"
MIMIC_SPLIT_COLUMNS = ("dicom_id", "study_id", "subject_id", "split")
#: The split column's values, and our split of each.
MIMIC_SPLIT_NAMES = {"train": "train", "validate": "val", "test": "test"}
MIMIC_SPLITS = tuple(MIMIC_SPLIT_NAMES)


def roco_folder(root: str | Path, folder: str, subset: str) -> Path:
    """``<root>/data/<folder>/<subset>``: one split's ``captions.txt`` and ``images/``."""
    return Path(root) / "data" / folder / subset


def roco_image(folder: Path, image_id: str) -> Path:
    return folder / "images" / f"{image_id}.jpg"


def clef_captions(root: str | Path, part: str) -> Path:
    return Path(root) / f"caption_prediction_{part}.csv"


def clef_image(root: str | Path, part: str, image_id: str) -> Path:
    return Path(root) / part / f"{image_id}.jpg"
