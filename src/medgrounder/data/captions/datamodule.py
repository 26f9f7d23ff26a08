"""The weighted mixture of PFMVG stage 1's caption corpora (the sources of
:mod:`medgrounder.data.captions.sources`) as ``[caption]`` batches.

:class:`CaptionDataModule` samples the training sources in proportion to their ``weight``
(:class:`MixtureSampler`); each training item is a random crop with an instruction drawn from
:data:`~medgrounder.tasks.caption.CAPTION_INSTRUCTIONS`. Evaluation views whole images with the
pool's first instruction. Images are read lazily (the corpora are large).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset, Sampler

from medgrounder.data.captions.sources import SPLITS, CaptionRecord, CaptionSource
from medgrounder.data.collate import PromptCollator
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


class MixtureSampler(Sampler):
    """``samples_per_epoch`` keys ``(source, index, epoch)``: each slot's source drawn with
    probability proportional to ``weight x size``, each source's items taken in a seeded
    permutation (cycled), so every item of a source appears before any repeats. Deterministic in
    ``(seed, epoch)``."""

    def __init__(self, sizes: Sequence[int], weights: Sequence[float], samples_per_epoch: int, seed: int):
        w = np.asarray([wt * n for n, wt in zip(sizes, weights, strict=True)], dtype=np.float64)
        if w.sum() <= 0:
            raise ValueError(f"no caption source has training samples and a positive weight (sizes {list(sizes)}, "
                             f"weights {list(weights)})")
        self.sizes = list(sizes)
        self.p = w / w.sum()
        self.samples_per_epoch = samples_per_epoch
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.samples_per_epoch

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        epoch = self.epoch
        self.epoch += 1
        rng = np.random.default_rng([self.seed, epoch, 1])
        picks = rng.choice(len(self.sizes), self.samples_per_epoch, p=self.p)
        orders = [rng.permutation(n) if n else np.zeros(0, int) for n in self.sizes]
        used = [0] * len(self.sizes)
        keys = []
        for s in picks:
            keys.append((int(s), int(orders[s][used[s] % self.sizes[s]]), epoch))
            used[s] += 1
        return iter(keys)


class CaptionDataset(Dataset):
    """``[caption]`` items. Training keys ``(source, index, epoch)`` (random crop and
    instruction from ``(seed, epoch, source, index)``); evaluation keys ``(source, index)`` or a
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


class CaptionDataModule(L.LightningDataModule):
    """The weighted mixture of caption ``sources`` (see the module docstring).

    ``sources``: ``{name: CaptionSource}`` (Hydra instantiates them); ``samples_per_epoch``:
    training items per epoch (default: the training records of all sources); ``eval_limit``:
    at most this many val / test items per source (a seeded subset; ``null``: all); ``crop``:
    :class:`CropSettings` fields for training views; ``synth``:
    :func:`medgrounder.data.captions.synth.synth_captions` arguments, to write the synthetic corpora at ``root``
    on first use (the sources then point inside it).
    """

    tasks = ("caption",)

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
        super().__init__()
        if not sources:
            raise ValueError("CaptionDataModule needs at least one source")
        self.sources = dict(sources)
        self.tokenizer = tokenizer
        self.root = root
        self.image_size = image_size
        self.cache_size = cache_size or image_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.samples_per_epoch = samples_per_epoch
        self.eval_limit = eval_limit
        self.crop = CropSettings(**{k: tuple(v) if isinstance(v, list) else v for k, v in dict(crop).items()}) if crop else None
        self.seed = seed
        self.synth = dict(synth) if synth else None
        self.set_task(task)
        self.records: dict[str, list[list[CaptionRecord]]] = {}

    def set_task(self, task: str, iters_per_epoch: int | None = None) -> None:
        if iters_per_epoch is not None:  # the stream sampler with a resumable position is VinDr's
            raise ValueError("stage iters_per_epoch is not supported for the caption corpora (set it to null)")
        if task not in self.tasks:
            raise ValueError(f"the caption corpora serve the task(s) {self.tasks}, got {task!r}")
        self.task = task

    def prepare_data(self) -> None:
        if not self.synth or self.root is None or Path(self.root).is_dir():
            return
        from medgrounder.core.io import write_complete
        from medgrounder.data.captions.synth import synth_captions

        write_complete(self.root, synth_captions, **self.synth)

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

    def mixture_sampler(self) -> MixtureSampler:
        sizes = [len(r) for r in self.records["train"]]
        n = self.samples_per_epoch or sum(sizes)
        return MixtureSampler(sizes, [s.weight for s in self.sources.values()], n, self.seed)

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.dataset("train"), batch_size=self.batch_size, sampler=self.mixture_sampler(),
                          num_workers=self.num_workers, collate_fn=PromptCollator(self.tokenizer), drop_last=True)

    def _eval_loader(self, split: str) -> DataLoader:
        return DataLoader(self.dataset(split), batch_size=self.eval_batch_size, shuffle=False,
                          num_workers=self.num_workers, collate_fn=PromptCollator(self.tokenizer))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self, task: str | None = None) -> DataLoader:
        return self._eval_loader("test")

    # ------------------------------------------------------------------ evaluation hooks
    def for_task(self, task: str) -> CaptionDataModule:
        return self

    def targets(self, split: str) -> list[Target]:
        """One target per record of ``split`` (every source), the caption as ``text``."""
        return [Target(r.id, text=r.caption) for recs in self.records[split] for r in recs]
