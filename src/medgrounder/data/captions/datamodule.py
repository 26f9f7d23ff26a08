"""The weighted mixture of PFMVG stage 1's caption corpora (the sources of
:mod:`medgrounder.data.captions.sources`) as ``[caption]`` batches.

:class:`CaptionDataModule` samples the training sources in proportion to their ``weight``
(:func:`mixture`); each training item is a random crop with an instruction drawn from
:data:`~medgrounder.tasks.caption.CAPTION_INSTRUCTIONS`. Evaluation views whole images with the
pool's first instruction. Images are read lazily (the corpora are large).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from medgrounder.data.base import GroundingDataModule, crop_settings
from medgrounder.data.captions.sources import SPLITS, CaptionRecord, CaptionSource
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

    def prompt_of(self, index: int) -> tuple[str, str]:
        """Evaluation item ``index``'s ``(task, instruction)`` without its image."""
        return "caption", CAPTION.instruction(rng=None)

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
    :func:`medgrounder.data.captions.synth.synth_captions` arguments, to write the synthetic corpora at ``root``
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
        from medgrounder.data.captions.synth import synth_captions

        synth_captions(folder, **self.synth)

    def exclude_patients(self, subjects: set[str]) -> None:
        """Leave the images of these patients (MIMIC-CXR subject ids) out of every source that
        knows patients (the MIMIC-CXR reports); call before :meth:`setup`."""
        for source in self.sources.values():
            if hasattr(source, "excluded_subjects"):
                source.excluded_subjects = frozenset(subjects)
        self.records = {}

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
        for name, source in self.sources.items():
            if getattr(source, "excluded_subjects", None):
                log.info("captions: %s: %s images of %d excluded patients left out (train/val/test)", name,
                         "/".join(str(source.excluded.get(sp, 0)) for sp in SPLITS), len(source.excluded_subjects))

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
