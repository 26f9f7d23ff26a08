"""MS-CXR phrase grounding (PFMVG stage 2): samples of :mod:`medgrounder.data.mscxr.records`
-> ``[refer]`` batches.

Training views are random crops (:mod:`medgrounder.data.views`; PFMVG trains on random 448
crops): boxes move with the image, a box cut by the crop is clipped, a box cropped away is
dropped, and a crop that leaves the phrase without a box is drawn again (after ``max_tries`` the
whole image is used). Validation and test view the whole image, so a predicted 0-100 grid box
maps back to original pixels with :func:`~medgrounder.core.boxes.from_grid` (what the metrics
do); rows also carry ``view`` for :func:`~medgrounder.data.views.view_grid_to_pixels`.

Images are decoded once into a square ``uint8 [N, C, C]`` cache (``cache_size``, default the
model's size; larger keeps crops sharp), aspect ratio not kept: boxes are relative to the original
width and height, so they survive the resize.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from medgrounder.core.boxes import Box
from medgrounder.core.labels import MSCXR_CATEGORIES
from medgrounder.data.base import (
    BoxedImage,
    BoxedImages,
    GroundingDataModule,
    crop_settings,
    decode_all,
)
from medgrounder.data.mscxr.layout import MSCXR_CSV
from medgrounder.data.mscxr.records import (
    SPLITS,
    MSCXRSample,
    load_mscxr_csv,
    official_split,
    split_by_patient,
)
from medgrounder.data.sampler import shuffled_with_pass
from medgrounder.data.views import (
    CropSettings,
    View,
    boxes_into_view,
    item_rng,
    load_square_gray,
    render_view,
    sample_crop,
    to_tensor,
    view_grid,
)
from medgrounder.tasks import Target, get_task
from medgrounder.tasks.refer import refer_instruction

log = logging.getLogger(__name__)
REFER = get_task("refer")


class ReferDataset(Dataset):
    """``[refer]`` items of one split.

    ``train=True``: keys are ``(index, pass)`` of the training stream; each item gets a random
    crop and a random instruction of the pool, drawn from ``(seed, pass, index)``. Otherwise keys
    are indices, the view is the whole image and the instruction the pool's first.
    """

    def __init__(self, samples: list[MSCXRSample], image_index: dict[str, int], cache: np.ndarray,
                 image_size: int, train: bool, crop: CropSettings | None, seed: int, instructions: str = "default"):
        self.instructions = instructions
        self.samples = samples
        self.image_index = image_index
        self.cache = cache
        self.image_size = image_size
        self.train = train
        self.crop = crop
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def prompt_of(self, index: int) -> tuple[str, str]:
        """Evaluation item ``index``'s ``(task, instruction)`` without its image."""
        return "refer", REFER.instruction(Target(text=self.samples[index].label_text), None, self.instructions)

    def view_and_boxes(self, s: MSCXRSample, rng: np.random.Generator | None) -> tuple[View, list[Box]]:
        """The view of ``s`` and its boxes in view pixels (cropped-away boxes dropped; re-cropped
        while none is left)."""
        full = View.full(s.width, s.height)
        if rng is not None and self.crop is not None:
            for _ in range(self.crop.max_tries):
                view = sample_crop(rng, s.width, s.height, self.crop)
                kept = [b for b in boxes_into_view(s.boxes, view, self.crop.min_visible) if b is not None]
                if kept:
                    return view, kept
        return full, [b for b in boxes_into_view(s.boxes, full) if b is not None]

    def __getitem__(self, key) -> dict:
        index, epoch = key if isinstance(key, tuple) else (key, None)
        s = self.samples[index]
        rng = item_rng(self.seed, epoch, index) if self.train and epoch is not None else None
        view, boxes = self.view_and_boxes(s, rng)
        instruction = REFER.instruction(Target(text=s.label_text), rng, self.instructions)
        answer = REFER.answer(Target(findings=tuple(("", view_grid(b, view)) for b in boxes)))
        image = render_view(self.cache[self.image_index[s.dicom_id]], s.width, s.height, view, self.image_size)
        return {
            "image": to_tensor(image),
            "task": "refer",
            "instruction": instruction,
            "answer": answer,
            "meta": {
                "id": s.sample_id,
                "image_id": s.dicom_id,
                "task": "refer",
                "prompt": REFER.prompt(instruction),
                "reference": answer,
                "label_text": s.label_text,
                "category": s.category,
                "image_width": s.width,
                "image_height": s.height,
                "gt_boxes": [list(b) for b in s.boxes],
                "view": [view.x1, view.y1, view.x2, view.y2],
            },
        }


def _decode(job: tuple[str, int]) -> np.ndarray:
    return load_square_gray(*job)


SOURCE = ("MS-CXR from https://physionet.org/content/ms-cxr/ with the MIMIC-CXR-JPG images "
          "(https://physionet.org/content/mimic-cxr-jpg/, credentialed access); set paths.mscxr_root / MSCXR_ROOT "
          "(the csv) and paths.mimic_cxr_jpg_root / MIMIC_CXR_JPG_ROOT (the folder holding files/)")


class MSCXRDataModule(GroundingDataModule):
    """MS-CXR ``[refer]`` batches (see the module docstring).

    ``root``: the folder of the csv; ``image_root``: MIMIC-CXR-JPG's root (holding ``files/``),
    default ``root``; ``split``: ``random`` (``split_ratios``, ``seed``) or ``official``;
    ``crop``: :class:`CropSettings` fields for training views, ``null`` for whole images;
    ``synth``: :func:`medgrounder.data.mscxr.synth.synth_mscxr` arguments, to write a synthetic set at
    ``root`` on first use.
    """

    tasks = ("refer",)
    title = "MS-CXR"

    def __init__(
        self,
        root: str,
        tokenizer=None,
        csv_name: str = MSCXR_CSV,
        image_root: str | None = None,
        image_size: int = 448,
        cache_size: int | None = None,
        split: str = "random",
        split_ratios: Sequence[float] = (7, 1, 2),
        seed: int = 0,
        batch_size: int = 4,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        crop: dict | None = None,
        decode_workers: int = 2,
        synth: dict | None = None,
        task: str = "refer",
        instructions: str = "default",
    ):
        if split not in ("random", "official"):
            raise ValueError(f"MS-CXR split must be 'random' or 'official', got {split!r}")
        super().__init__(root, tokenizer, batch_size=batch_size, eval_batch_size=eval_batch_size,
                         num_workers=num_workers, seed=seed, synth=synth, task=task)
        refer_instruction("x", 0, instructions)  # an unknown pool fails here, naming data.instructions
        self.instructions = instructions
        self.csv_name = csv_name
        self.image_root = image_root or root
        self.image_size = image_size
        self.cache_size = cache_size or image_size
        self.split = split
        self.split_ratios = tuple(split_ratios)
        self.crop = crop_settings(crop)
        self.decode_workers = decode_workers
        self.splits: dict[str, list[MSCXRSample]] = {}
        self.image_index: dict[str, int] = {}
        self.cache: np.ndarray | None = None

    @property
    def csv_path(self) -> Path:
        return Path(self.root) / self.csv_name

    def missing_data(self) -> list[str]:
        problems = []
        if not self.csv_path.is_file():
            problems.append(f"data.root={Path(self.root).resolve()} lacks {self.csv_name}. Get {SOURCE}.")
        files = Path(self.image_root) / "files"
        if not files.is_dir():
            problems.append(f"MS-CXR images: {files.resolve()} does not exist. Get {SOURCE}.")
        return problems

    def write_synthetic(self, folder: Path) -> None:
        from medgrounder.data.mscxr.synth import synth_mscxr

        synth_mscxr(folder, **self.synth)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        samples = load_mscxr_csv(self.csv_path)
        self.splits = official_split(samples) if self.split == "official" else split_by_patient(
            samples, self.split_ratios, self.seed)
        paths = {}
        for s in samples:
            paths.setdefault(s.dicom_id, s.path)
        missing = [p for p in paths.values() if not (Path(self.image_root) / p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} of {len(paths)} MS-CXR images are missing under image_root="
                                    f"{Path(self.image_root).resolve()}, e.g. {missing[:3]}: set data.image_root to "
                                    "the MIMIC-CXR-JPG folder that holds files/")
        self.image_index = {d: i for i, d in enumerate(paths)}
        jobs = [(str(Path(self.image_root) / p), self.cache_size) for p in paths.values()]
        arrays = decode_all(_decode, jobs, self.decode_workers, f"decode MS-CXR ({self.cache_size}px)")
        self.cache = np.stack(arrays) if arrays else np.zeros((0, self.cache_size, self.cache_size), np.uint8)
        log.info("MS-CXR: %s samples (train / val / test), %d images, split %s",
                 "/".join(str(len(self.splits[k])) for k in SPLITS), len(paths), self.split)

    def eval_patients(self) -> set[str]:
        """The subject ids of the validation and test samples (after :meth:`setup`)."""
        return {s.subject_id for split in ("val", "test") for s in self.splits[split]}

    def sample_counts(self) -> dict[str, int]:
        """Samples per split (after :meth:`setup`)."""
        return {split: len(self.splits[split]) for split in SPLITS}

    # ------------------------------------------------------------------ datasets and loaders
    def samples(self, split: str, task: str | None = None) -> list[MSCXRSample]:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        return self.splits[split]

    def dataset(self, split: str, task: str | None = None) -> ReferDataset:
        train = split == "train"
        return ReferDataset(self.samples(split), self.image_index, self.cache, self.image_size, train,
                            self.crop if train else None, self.seed, self.instructions)

    def training_keys(self, k: int) -> list[tuple[int, int]]:
        return shuffled_with_pass(len(self.splits["train"]), self.seed)(k)

    # ------------------------------------------------------------------ what other parts read
    def targets(self, split: str) -> list[Target]:
        """One per phrase sample: every box as ``(category, 0-100 grid box of the whole image)``,
        the phrase as ``text``."""
        return [Target(s.dicom_id, s.width, s.height,
                       tuple((s.category, view_grid(b, View.full(s.width, s.height))) for b in s.boxes),
                       text=s.label_text) for s in self.samples(split)]

    def picture(self, image_id: str) -> tuple[np.ndarray, float, float]:
        """The cached picture of an image and the factors from original pixels onto it."""
        sample = next(s for split in SPLITS for s in self.splits[split] if s.dicom_id == image_id)
        c = self.cache.shape[1]
        return self.cache[self.image_index[image_id]], c / sample.width, c / sample.height

    def boxed_training_images(self) -> BoxedImages:
        """The training images (whole views), every box of their phrases as ``(category, pixel
        box)``; the classes are MS-CXR's categories (and any other the csv names)."""
        by_image: dict[str, tuple[int, int, list]] = {}
        for s in self.splits["train"]:
            by_image.setdefault(s.dicom_id, (s.width, s.height, []))[2].extend((s.category, b) for b in s.boxes)
        images = [render_view(self.cache[self.image_index[d]], w, h, View.full(w, h), self.image_size)
                  for d, (w, h, _) in by_image.items()]
        stacked = torch.from_numpy(np.stack(images)) if images else torch.empty(0, self.image_size, self.image_size,
                                                                                 dtype=torch.uint8)
        records = [BoxedImage(w, h, tuple(f)) for w, h, f in by_image.values()]
        extra = sorted({c for r in records for c, _ in r.findings} - set(MSCXR_CATEGORIES))
        return BoxedImages(stacked, records, (*MSCXR_CATEGORIES, *extra))
