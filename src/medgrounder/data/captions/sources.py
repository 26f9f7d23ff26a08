r"""The caption corpora of PFMVG stage 1 as *sources* (Hydra ``_target_``\s) that list
``(image, caption)`` records per split ``train | val | test`` from their official layouts
(:mod:`medgrounder.data.captions.layout`):

- :class:`RocoCaptions`: ROCO's ``captions.txt`` per split and subset; PFMVG uses the
  ``radiology`` subset.
- :class:`ImageCLEF2022Captions`: the ``caption_prediction_{train,valid}.csv`` files. The test
  captions were never released, so ``test`` is the ``valid`` file and ``val`` a seeded fraction
  of ``train``.
- :class:`MimicReports`: MIMIC-CXR-JPG's split csv (``validate`` is val), its images and
  MIMIC-CXR's free-text reports, whose ``sections`` (default FINDINGS and IMPRESSION) joined are
  the caption; images whose report has none of them are skipped.

Errors name the file and the line.
"""

from __future__ import annotations

import csv
import gzip
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from medgrounder.data.captions.layout import (
    CLEF_COLUMNS,
    MIMIC_SPLIT_COLUMNS,
    MIMIC_SPLIT_CSV,
    MIMIC_SPLIT_NAMES,
    ROCO_CAPTIONS,
    ROCO_FOLDERS,
    ROCO_SUBSETS,
    clef_captions,
    clef_image,
    roco_folder,
    roco_image,
)
from medgrounder.data.mscxr.layout import mimic_jpg_path, mimic_report_path

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CaptionRecord:
    id: str
    image: str  # the image file
    caption: str
    source: str


def _clean(text: str) -> str:
    return " ".join(text.split())


def _seeded_fraction(n: int, fraction: float, seed: int) -> set[int]:
    k = round(n * fraction)
    return set(np.random.default_rng(seed).permutation(n)[:k].tolist())


class CaptionSource:
    """A corpus: ``records(split)`` for ``train | val | test``. ``weight`` scales its share of
    the mixture relative to plain concatenation: a source is drawn with probability
    proportional to ``weight x`` its number of training records (1.0 everywhere: every record
    equally likely; 2.0: this corpus twice as often per record)."""

    name = "source"

    def __init__(self, root: str, weight: float = 1.0):
        if weight < 0:
            raise ValueError(f"{type(self).__name__}: weight must be >= 0, got {weight}")
        self.root = Path(root)
        self.weight = float(weight)

    def records(self, split: str) -> list[CaptionRecord]:
        raise NotImplementedError

    #: where to get the corpus (start-up messages)
    where: ClassVar[str] = ""

    def marker(self) -> Path:
        """The file or folder whose presence says the corpus is there."""
        return self.root

    def missing_data(self, name: str) -> list[str]:
        marker = self.marker()
        if marker.exists() or marker.with_name(marker.name + ".gz").is_file():
            return []
        return [f"data caption source {name}: {marker.resolve()} does not exist. Get {self.where}."]

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


class RocoCaptions(CaptionSource):
    """ROCO (Pelka et al. 2018), ``subset`` ``radiology`` (PFMVG) or ``non-radiology``."""

    name = "roco"
    where = ("ROCO (radiology subset) from https://github.com/razorx89/roco-dataset; set paths.roco_root / "
             "ROCO_ROOT to the folder holding data/")

    def __init__(self, root: str, subset: str = "radiology", weight: float = 1.0):
        super().__init__(root, weight)
        if subset not in ROCO_SUBSETS:
            raise ValueError(f"ROCO subset must be 'radiology' or 'non-radiology', got {subset!r}")
        self.subset = subset

    def marker(self) -> Path:
        return self.root / "data"

    def records(self, split: str) -> list[CaptionRecord]:
        self._check_split(split)
        folder = roco_folder(self.root, ROCO_FOLDERS[split], self.subset)
        path = folder / ROCO_CAPTIONS
        if not path.is_file():
            raise FileNotFoundError(f"ROCO captions {path} do not exist (expected <root>/data/"
                                    f"{{train,validation,test}}/{self.subset}/captions.txt)")
        out = []
        for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise ValueError(f"{path}:{line_no}: expected 'ID<TAB>caption', got {line[:80]!r}")
            rid, caption = line.split("\t", 1)
            rid, caption = rid.strip(), _clean(caption)
            if not rid or not caption:
                raise ValueError(f"{path}:{line_no}: empty id or caption")
            out.append(CaptionRecord(rid, str(roco_image(folder, rid)), caption, self.name))
        return out


class ImageCLEF2022Captions(CaptionSource):
    """ImageCLEFmedical 2022 caption prediction (Rückert et al. 2022)."""

    name = "clef2022"
    where = ("ImageCLEFmedical 2022 caption prediction (https://www.imageclef.org/2022/medical/caption, "
             "registration); set paths.clef2022_root / CLEF2022_ROOT to the folder holding caption_prediction_*.csv")

    def __init__(self, root: str, weight: float = 1.0, val_fraction: float = 0.05, seed: int = 0):
        super().__init__(root, weight)
        self.val_fraction = val_fraction
        self.seed = seed

    def _read(self, part: str) -> list[CaptionRecord]:
        path = clef_captions(self.root, part)
        if not path.is_file():
            raise FileNotFoundError(f"ImageCLEF 2022 captions {path} do not exist")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            missing = [c for c in CLEF_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (a TAB-separated file with header "
                                 f"'ID<TAB>caption'; got {reader.fieldnames})")
            out = []
            for line_no, row in enumerate(reader, start=2):
                cid, caption = (row["ID"] or "").strip(), _clean(row["caption"] or "")
                if not cid or not caption:
                    raise ValueError(f"{path}:{line_no}: empty ID or caption")
                out.append(CaptionRecord(cid, str(clef_image(self.root, part, cid)), caption, self.name))
        return out

    def records(self, split: str) -> list[CaptionRecord]:
        self._check_split(split)
        if split == "test":
            return self._read("valid")
        train = self._read("train")
        held = _seeded_fraction(len(train), self.val_fraction, self.seed)
        return [r for i, r in enumerate(train) if (i in held) == (split == "val")]


_HEADER_RE = re.compile(r"^\s*([A-Z][A-Z /&()-]*[A-Z)]):", re.MULTILINE)


def report_sections(text: str) -> dict[str, str]:
    """A MIMIC-CXR free-text report -> ``{section name (lower case): text}`` for every
    ``UPPER CASE:`` header at the start of a line (text up to the next header, whitespace
    collapsed; a repeated header keeps the first)."""
    heads = list(_HEADER_RE.finditer(text))
    out: dict[str, str] = {}
    for k, m in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(text)
        out.setdefault(m.group(1).strip().lower(), _clean(text[m.end() : end]))
    return out


class MimicReports(CaptionSource):
    """MIMIC-CXR reports with MIMIC-CXR-JPG images (Johnson et al. 2019)."""

    name = "mimic"
    where = ("MIMIC-CXR reports (https://physionet.org/content/mimic-cxr/) and MIMIC-CXR-JPG "
             "(https://physionet.org/content/mimic-cxr-jpg/), credentialed access; set paths.mimic_cxr_jpg_root / "
             "MIMIC_CXR_JPG_ROOT and paths.mimic_cxr_reports_root / MIMIC_CXR_REPORTS_ROOT")
    SPLIT_NAMES: ClassVar[dict[str, str]] = {**MIMIC_SPLIT_NAMES, "val": "val"}

    def __init__(self, root: str, image_root: str | None = None, reports_root: str | None = None,
                 split_csv: str = MIMIC_SPLIT_CSV, sections: Sequence[str] = ("findings", "impression"),
                 one_per_study: bool = False, weight: float = 1.0):
        super().__init__(root, weight)
        self.image_root = Path(image_root or root)
        self.reports_root = Path(reports_root or root)
        self.split_csv = self.root / split_csv
        self.sections = tuple(s.lower() for s in sections)
        if not self.sections:
            raise ValueError("MimicReports needs at least one report section")
        self.one_per_study = one_per_study
        self._rows: list[tuple[str, str, str, str]] | None = None
        # patients whose images stay out of every split (MS-CXR's evaluation patients: the
        # multitask data module sets them); excluded[split]: the images left out for it
        self.excluded_subjects: frozenset[str] = frozenset()
        self.excluded: dict[str, int] = {}

    def marker(self) -> Path:
        return self.split_csv

    def _split_rows(self) -> list[tuple[str, str, str, str]]:
        if self._rows is None:
            path = self.split_csv
            if not path.is_file() and path.with_name(path.name + ".gz").is_file():
                path = path.with_name(path.name + ".gz")  # as PhysioNet ships it
            if not path.is_file():
                raise FileNotFoundError(f"MIMIC-CXR-JPG split csv {self.split_csv} does not exist")
            opener = gzip.open if path.suffix == ".gz" else open
            with opener(path, "rt", newline="", encoding="utf-8") as f:
                reader = csv.DictReader(f)
                missing = [c for c in MIMIC_SPLIT_COLUMNS if c not in (reader.fieldnames or [])]
                if missing:
                    raise ValueError(f"{self.split_csv}: missing column(s) {', '.join(missing)}")
                rows = []
                for line_no, row in enumerate(reader, start=2):
                    split = self.SPLIT_NAMES.get((row["split"] or "").strip())
                    if split is None:
                        raise ValueError(f"{self.split_csv}:{line_no}: split {row['split']!r} is not one of "
                                         f"{sorted(self.SPLIT_NAMES)}")
                    rows.append((row["dicom_id"].strip(), row["study_id"].strip(), row["subject_id"].strip(), split))
            self._rows = rows
        return self._rows

    def caption(self, report: str) -> str | None:
        """The configured sections of a report, joined (None when it has none of them)."""
        found = report_sections(report)
        parts = [found[s] for s in self.sections if found.get(s)]
        return " ".join(parts) or None

    def records(self, split: str) -> list[CaptionRecord]:
        self._check_split(split)
        out, seen_studies, captions = [], set(), {}
        self.excluded[split] = 0
        for dicom, study, subject, row_split in self._split_rows():
            if row_split != split or (self.one_per_study and study in seen_studies):
                continue
            if subject in self.excluded_subjects:
                self.excluded[split] += 1
                continue
            if study not in captions:
                report = self.reports_root / mimic_report_path(subject, study)
                if not report.is_file():
                    raise FileNotFoundError(f"MIMIC-CXR report {report} (study {study} of {self.split_csv}) does not "
                                            "exist: set reports_root to the folder holding files/ of mimic-cxr-reports")
                captions[study] = self.caption(report.read_text(encoding="utf-8", errors="replace"))
            if captions[study] is None:
                continue
            seen_studies.add(study)
            out.append(CaptionRecord(dicom, str(self.image_root / mimic_jpg_path(subject, study, dicom)), captions[study],
                                     self.name))
        return out
