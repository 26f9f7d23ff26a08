"""Caption corpora of PFMVG stage 1 (ROCO, ImageCLEF 2022, MIMIC-CXR reports) and their
weighted mixture as ``[caption]`` batches.

Each corpus is a *source* (a Hydra ``_target_``) that lists ``(image, caption)`` records per split
``train | val | test`` from its official layout (design section 5):

- :class:`RocoCaptions`: ``<root>/data/{train,validation,test}/<subset>/captions.txt`` (TAB: id,
  caption) with ``images/<id>.jpg`` beside it; PFMVG uses the ``radiology`` subset.
- :class:`ImageCLEF2022Captions`: ``<root>/caption_prediction_{train,valid}.csv`` (TAB, header
  ``ID caption``) with ``{train,valid}/<ID>.jpg``. The test captions were never released, so
  ``test`` is the ``valid`` file and ``val`` a seeded fraction of ``train``.
- :class:`MimicReports`: MIMIC-CXR-JPG's split csv (``dicom_id, study_id, subject_id, split``;
  ``validate`` is val), the images ``files/pXX/pXXXXXXXX/sYYYYYYYY/<dicom_id>.jpg`` and
  MIMIC-CXR's free-text reports ``files/pXX/pXXXXXXXX/sYYYYYYYY.txt``, whose ``sections``
  (default FINDINGS and IMPRESSION) joined are the caption; images whose report has none of them
  are skipped.

:class:`CaptionDataModule` samples the training sources in proportion to their ``weight``
(:func:`mixture`); each training item is a random crop with an instruction drawn from
:data:`~medgrounder.tasks.caption.CAPTION_INSTRUCTIONS`. Evaluation views whole images with the
pool's first instruction. Images are read lazily (the corpora are large).
"""

from __future__ import annotations

import csv
import gzip
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
from torch.utils.data import Dataset

from medgrounder.data.base import GroundingDataModule, crop_settings
from medgrounder.data.sampler import PassKeys
from medgrounder.data.views import (
    CropSettings,
    View,
    item_rng,
    read_square_gray,
    render_view,
    sample_crop,
    to_tensor,
)
from medgrounder.tasks import Target, get_task

log = logging.getLogger(__name__)
CAPTION = get_task("caption")
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
    FOLDERS: ClassVar[dict[str, str]] = {"train": "train", "val": "validation", "test": "test"}

    def __init__(self, root: str, subset: str = "radiology", weight: float = 1.0):
        super().__init__(root, weight)
        if subset not in ("radiology", "non-radiology"):
            raise ValueError(f"ROCO subset must be 'radiology' or 'non-radiology', got {subset!r}")
        self.subset = subset

    def marker(self) -> Path:
        return self.root / "data"

    def records(self, split: str) -> list[CaptionRecord]:
        self._check_split(split)
        folder = self.root / "data" / self.FOLDERS[split] / self.subset
        path = folder / "captions.txt"
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
            out.append(CaptionRecord(rid, str(folder / "images" / f"{rid}.jpg"), caption, self.name))
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
        path = self.root / f"caption_prediction_{part}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"ImageCLEF 2022 captions {path} do not exist")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            missing = [c for c in ("ID", "caption") if c not in (reader.fieldnames or [])]
            if missing:
                raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (a TAB-separated file with header "
                                 f"'ID<TAB>caption'; got {reader.fieldnames})")
            out = []
            for line_no, row in enumerate(reader, start=2):
                cid, caption = (row["ID"] or "").strip(), _clean(row["caption"] or "")
                if not cid or not caption:
                    raise ValueError(f"{path}:{line_no}: empty ID or caption")
                out.append(CaptionRecord(cid, str(self.root / part / f"{cid}.jpg"), caption, self.name))
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
    SPLIT_NAMES: ClassVar[dict[str, str]] = {"train": "train", "validate": "val", "val": "val", "test": "test"}

    def __init__(self, root: str, image_root: str | None = None, reports_root: str | None = None,
                 split_csv: str = "mimic-cxr-2.0.0-split.csv", sections: Sequence[str] = ("findings", "impression"),
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
                need = ("dicom_id", "study_id", "subject_id", "split")
                missing = [c for c in need if c not in (reader.fieldnames or [])]
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
        for dicom, study, subject, row_split in self._split_rows():
            if row_split != split or (self.one_per_study and study in seen_studies):
                continue
            folder = f"files/p{subject[:2]}/p{subject}/s{study}"
            if study not in captions:
                report = self.reports_root / f"{folder}.txt"
                if not report.is_file():
                    raise FileNotFoundError(f"MIMIC-CXR report {report} (study {study} of {self.split_csv}) does not "
                                            "exist: set reports_root to the folder holding files/ of mimic-cxr-reports")
                captions[study] = self.caption(report.read_text(encoding="utf-8", errors="replace"))
            if captions[study] is None:
                continue
            seen_studies.add(study)
            out.append(CaptionRecord(dicom, str(self.image_root / folder / f"{dicom}.jpg"), captions[study], self.name))
        return out


def mixture(sizes: Sequence[int], weights: Sequence[float], samples_per_pass: int, seed: int) -> PassKeys:
    """Pass ``k``: ``samples_per_pass`` keys ``(source, index, k)``, each slot's source drawn with
    probability proportional to ``weight x size``, each source's items taken in a seeded
    permutation (cycled), so every item of a source appears before any repeats. Deterministic in
    ``(seed, k)``."""
    w = np.asarray([wt * n for n, wt in zip(sizes, weights, strict=True)], dtype=np.float64)
    if w.sum() <= 0:
        raise ValueError(f"no caption source has training samples and a positive weight (sizes {list(sizes)}, "
                         f"weights {list(weights)})")
    sizes, p = list(sizes), w / w.sum()

    def keys(k: int) -> list[tuple[int, int, int]]:
        rng = np.random.default_rng([seed, k, 1])
        picks = rng.choice(len(sizes), samples_per_pass, p=p)
        orders = [rng.permutation(n) if n else np.zeros(0, int) for n in sizes]
        used = [0] * len(sizes)
        out = []
        for s in picks:
            out.append((int(s), int(orders[s][used[s] % sizes[s]]), k))
            used[s] += 1
        return out

    return keys


class CaptionDataset(Dataset):
    """``[caption]`` items. Training keys ``(source, index, pass)`` (random crop and
    instruction from ``(seed, pass, source, index)``); evaluation keys ``(source, index)`` or a
    flat index (whole image, the pool's first instruction)."""

    def __init__(self, records: list[list[CaptionRecord]], image_size: int, train: bool,
                 crop: CropSettings | None, seed: int, cache_size: int | None = None):
        self.records = records
        self.flat = [(s, i) for s, recs in enumerate(records) for i in range(len(recs))]
        self.image_size = image_size
        self.cache_size = cache_size or image_size
        self.train = train
        self.crop = crop
        self.seed = seed

    def __len__(self) -> int:
        return len(self.flat)

    def __getitem__(self, key) -> dict:
        if isinstance(key, tuple) and len(key) == 3:
            source, index, epoch = key
        else:
            (source, index), epoch = (key if isinstance(key, tuple) else self.flat[key]), None
        r = self.records[source][index]
        rng = item_rng(self.seed, epoch, index, salt=source + 1) if self.train and epoch is not None else None
        try:
            cache, width, height = read_square_gray(r.image, self.cache_size)
        except (OSError, ValueError) as e:
            raise OSError(f"{r.source} image {r.image} (record {r.id}) cannot be read: {e}") from e
        view = sample_crop(rng, width, height, self.crop) if rng is not None and self.crop else View.full(width, height)
        instruction = CAPTION.instruction(rng=rng)
        return {
            "image": to_tensor(render_view(cache, width, height, view, self.image_size)),
            "task": "caption",
            "instruction": instruction,
            "answer": r.caption,
            "meta": {
                "id": f"{r.source}:{r.id}",
                "image_id": r.id,
                "task": "caption",
                "source": r.source,
                "prompt": CAPTION.prompt(instruction),
                "reference": r.caption,
                "image_width": width,
                "image_height": height,
            },
        }


class CaptionDataModule(GroundingDataModule):
    """The weighted mixture of caption ``sources`` (see the module docstring).

    ``sources``: ``{name: CaptionSource}`` (Hydra instantiates them); ``samples_per_epoch``:
    training items per pass (default: the training records of all sources); ``eval_limit``:
    at most this many val / test items per source (a seeded subset; ``null``: all); ``crop``:
    :class:`CropSettings` fields for training views; ``synth``:
    :func:`medgrounder.synth.synth_captions` arguments, to write the synthetic corpora at ``root``
    on first use (the sources then point inside it).
    """

    tasks = ("caption",)
    title = "the caption corpora"

    def __init__(
        self,
        sources: Mapping[str, CaptionSource],
        tokenizer=None,
        root: str | None = None,
        image_size: int = 448,
        cache_size: int | None = None,
        batch_size: int = 2,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        samples_per_epoch: int | None = None,
        eval_limit: int | None = None,
        crop: dict | None = None,
        seed: int = 0,
        synth: dict | None = None,
        task: str = "caption",
    ):
        if not sources:
            raise ValueError("CaptionDataModule needs at least one source")
        super().__init__(root, tokenizer, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, seed=seed, synth=synth, task=task)
        self.sources = dict(sources)
        self.image_size = image_size
        self.cache_size = cache_size or image_size
        self.samples_per_epoch = samples_per_epoch
        self.eval_limit = eval_limit
        self.crop = crop_settings(crop)
        self.records: dict[str, list[list[CaptionRecord]]] = {}
        self._mixture: PassKeys | None = None

    def missing_data(self) -> list[str]:
        return [p for name, source in self.sources.items() for p in source.missing_data(name)]

    def write_synthetic(self, folder: Path) -> None:
        from medgrounder.synth import synth_captions

        synth_captions(folder, **self.synth)

    def setup(self, stage: str | None = None) -> None:
        if self.records:
            return
        for split in SPLITS:
            per_source = []
            for name, source in self.sources.items():
                recs = source.records(split)
                if split != "train" and self.eval_limit is not None and len(recs) > self.eval_limit:
                    keep = sorted(np.random.default_rng([self.seed, 2]).permutation(len(recs))[: self.eval_limit])
                    recs = [recs[i] for i in keep]
                missing = [r.image for r in recs[:200] if not Path(r.image).is_file()]
                if missing:
                    raise FileNotFoundError(f"caption source {name} ({split}): {len(missing)} of the first "
                                            f"{min(len(recs), 200)} images are missing, e.g. {missing[:3]}")
                per_source.append(recs)
            self.records[split] = per_source
        log.info("captions: %s", {name: "/".join(str(len(self.records[sp][k])) for sp in SPLITS)
                                  for k, name in enumerate(self.sources)})

    def dataset(self, split: str, task: str | None = None) -> CaptionDataset:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        train = split == "train"
        return CaptionDataset(self.records[split], self.image_size, train, self.crop if train else None, self.seed,
                              self.cache_size)

    def training_keys(self, k: int) -> list[tuple[int, int, int]]:
        if self._mixture is None:
            sizes = [len(r) for r in self.records["train"]]
            self._mixture = mixture(sizes, [s.weight for s in self.sources.values()],
                                    self.samples_per_epoch or sum(sizes), self.seed)
        return self._mixture(k)

    # ------------------------------------------------------------------ what other parts read
    def targets(self, split: str) -> list[Target]:
        """One per record (sources in order): the caption as ``text``."""
        return [Target(r.id, text=r.caption) for recs in self.records[split] for r in recs]

    def picture(self, image_id: str) -> tuple[np.ndarray, float, float]:
        """The record's image at ``cache_size`` and the factors from original pixels onto it."""
        r = next(r for split in SPLITS for recs in self.records[split] for r in recs if r.id == image_id)
        img, width, height = read_square_gray(r.image, self.cache_size)
        return img, self.cache_size / width, self.cache_size / height
