"""The training sampler of every dataset: one seeded stream of keys, cut into epochs, sharded over
ranks, and resumable at any batch.

A dataset supplies the keys of each *pass* (``pass_keys(k)``, a pure function of ``k``: VinDr a
seeded permutation of its indices, MS-CXR ``(index, k)``, the caption mixture
``(source, index, k)``; :func:`shuffled` and :func:`shuffled_with_pass` build the first two), so
the key of any position is a pure function of the position. Training takes *global* batches
(``batch_size x world``); rank ``r`` takes the ``r``-th slice of each. Epochs come in two kinds:

- ``whole_passes=True``: epoch ``k`` is pass ``k``, its incomplete last global batch dropped
  (MS-CXR and the captions without ``iters_per_epoch``: a dataset's epoch as usual);
- else the passes are concatenated into one stream and an epoch is ``epoch_batches`` global
  batches of it, the next epoch continuing where it stopped (MiniGPT-4 / LiteGPT count epochs in
  iterations, ``iters_per_epoch``); ``epoch_batches=None`` is ``n // global batch``, about one pass.

Global batch ``b`` (counted from the start of training) is a pure function of ``b``, so resuming
needs only the index where training stopped (``start``): the first ``__iter__`` yields the rest
of that epoch, later ones whole epochs. The index comes from Lightning's progress counters when a
checkpoint is written (:meth:`~medgrounder.data.base.GroundingDataModule.state_dict`), not from
the sampler, which the loader iterates ahead of training (prefetching).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = ["StreamSampler", "shuffled", "shuffled_with_pass"]

PassKeys = Callable[[int], Sequence[Hashable]]


def shuffled(n: int, seed: int) -> PassKeys:
    """Pass ``k``: ``default_rng([seed, k]).permutation(n)`` (VinDr's stream)."""
    return lambda k: np.random.default_rng([seed, k]).permutation(n).tolist()


def shuffled_with_pass(n: int, seed: int) -> PassKeys:
    """Pass ``k``: ``(index, k)`` in the order of :func:`shuffled`; the dataset seeds each item's
    randomness (crop, instruction) with ``k``."""
    return lambda k: [(int(i), k) for i in np.random.default_rng([seed, k]).permutation(n)]


class StreamSampler(Sampler):
    def __init__(self, pass_keys: PassKeys, batch_size: int, epoch_batches: int | None = None,
                 whole_passes: bool = False, rank: int = 0, world_size: int = 1, start: int = 0):
        self.pass_keys = pass_keys
        self._pass: tuple[int, Sequence[Hashable]] | None = None
        self.n = len(self.keys_of_pass(0))
        if self.n <= 0:
            raise ValueError("the training split is empty")
        self.batch_size = batch_size
        self.rank = rank
        self.world_size = world_size
        self.global_batch = batch_size * world_size
        self.whole_passes = whole_passes
        if whole_passes and epoch_batches is not None:
            raise ValueError("an epoch of whole passes has n // global batch batches: epoch_batches must be None")
        if epoch_batches is None:
            epoch_batches = self.n // self.global_batch
            if epoch_batches == 0:
                raise ValueError(f"{self.n} training samples do not fill one global batch of {self.global_batch} "
                                 f"(data.batch_size={batch_size} x {world_size} processes)")
        if epoch_batches <= 0:
            raise ValueError(f"iters_per_epoch must be positive, got {epoch_batches}")
        self.epoch_batches = epoch_batches
        self.start = start          # global batch index where the next __iter__ begins
        self.epoch_begin = (start // epoch_batches) * epoch_batches  # of the epoch being iterated

    def __len__(self) -> int:
        return self.epoch_batches * self.batch_size

    def keys_of_pass(self, k: int) -> Sequence[Hashable]:
        if self._pass is None or self._pass[0] != k:
            self._pass = (k, self.pass_keys(k))
        return self._pass[1]

    def stream(self, begin: int, end: int) -> list[Hashable]:
        """Positions ``[begin, end)`` of the concatenated passes."""
        out: list[Hashable] = []
        pos = begin
        while pos < end:
            k, off = divmod(pos, self.n)
            take = min(end - pos, self.n - off)
            out.extend(self.keys_of_pass(k)[off : off + take])
            pos += take
        return out

    def global_batch_keys(self, b: int) -> list[Hashable]:
        """Every rank's keys of global batch ``b``, rank 0's first."""
        if self.whole_passes:
            k, j = divmod(b, self.epoch_batches)
            return list(self.keys_of_pass(k)[j * self.global_batch : (j + 1) * self.global_batch])
        return self.stream(b * self.global_batch, (b + 1) * self.global_batch)

    def __iter__(self) -> Iterator[Hashable]:
        start = self.start
        self.epoch_begin = (start // self.epoch_batches) * self.epoch_batches
        end = self.epoch_begin + self.epoch_batches
        self.start = end  # the next epoch, whether or not this one is iterated to its end
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for b in range(start, end):
            yield from self.global_batch_keys(b)[lo:hi]
