"""The training sampler: one seeded stream of indices, cut into epochs, sharded over ranks, and
resumable at any batch.

The stream is the concatenation of seeded permutations of the dataset (pass ``k`` is
``default_rng([seed, k]).permutation(n)``), so position ``p`` of the stream is a pure function of
``(seed, n, p)``. An epoch is ``epoch_batches`` *global* batches (``batch_size x world``) of the
stream; rank ``r`` takes the ``r``-th slice of each global batch. Epochs continue the stream
rather than reshuffling (MiniGPT-4 / LiteGPT count epochs in iterations, ``iters_per_epoch``); with
``epoch_batches=None`` an epoch is ``n // global batch`` batches, about one pass.

Resuming needs only the global batch index where training stopped (``start``): the first
``__iter__`` yields the rest of that epoch, later ones whole epochs. The index comes from
Lightning's progress counters when a checkpoint is written
(:meth:`~medgrounder.data.vindr.datamodule.VinDrDataModule.state_dict`), not from the sampler, which
the loader iterates ahead of training (prefetching).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class StreamSampler(Sampler[int]):
    def __init__(self, n: int, batch_size: int, seed: int = 0, epoch_batches: int | None = None,
                 rank: int = 0, world_size: int = 1, start: int = 0):
        if n <= 0:
            raise ValueError("the training split is empty")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.global_batch = batch_size * world_size
        if epoch_batches is None:
            epoch_batches = n // self.global_batch
            if epoch_batches == 0:
                raise ValueError(f"{n} training samples do not fill one global batch of {self.global_batch} "
                                 f"(data.batch_size={batch_size} x {world_size} processes)")
        if epoch_batches <= 0:
            raise ValueError(f"iters_per_epoch must be positive, got {epoch_batches}")
        self.epoch_batches = epoch_batches
        self.start = start          # global batch index where the next __iter__ begins
        self.epoch_begin = (start // epoch_batches) * epoch_batches  # of the epoch being iterated
        self._perm: tuple[int, np.ndarray] | None = None

    def __len__(self) -> int:
        return self.epoch_batches * self.batch_size

    def permutation(self, k: int) -> np.ndarray:
        """Pass ``k`` of the stream."""
        if self._perm is None or self._perm[0] != k:
            self._perm = (k, np.random.default_rng([self.seed, k]).permutation(self.n))
        return self._perm[1]

    def stream(self, begin: int, end: int) -> list[int]:
        """Stream positions ``[begin, end)`` as dataset indices."""
        out: list[int] = []
        pos = begin
        while pos < end:
            k, off = divmod(pos, self.n)
            take = min(end - pos, self.n - off)
            out.extend(self.permutation(k)[off : off + take].tolist())
            pos += take
        return out

    def global_batch_indices(self, b: int) -> list[int]:
        """Every rank's samples of global batch ``b``, rank 0's first."""
        return self.stream(b * self.global_batch, (b + 1) * self.global_batch)

    def __iter__(self) -> Iterator[int]:
        start = self.start
        self.epoch_begin = (start // self.epoch_batches) * self.epoch_batches
        end = self.epoch_begin + self.epoch_batches
        self.start = end  # the next epoch, whether or not this one is iterated to its end
        lo, hi = self.rank * self.batch_size, (self.rank + 1) * self.batch_size
        for b in range(start, end):
            yield from self.global_batch_indices(b)[lo:hi]
