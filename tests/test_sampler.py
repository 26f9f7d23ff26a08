"""The one training sampler: shards disjoint with the world-1 stream as their union, resume at any
batch, and at world size 1 exactly the orders of the samplers it replaced (VinDr's stream,
MS-CXR's per-epoch permutation, the caption mixture), recomputed here from their definitions."""

from __future__ import annotations

import numpy as np
import pytest

from medgrounder.data.captions.datamodule import mixture
from medgrounder.data.sampler import StreamSampler, shuffled, shuffled_with_pass

SIZES, WEIGHTS = [7, 12, 0, 5], [2.0, 1.0, 3.0, 0.5]
STREAMS = {  # name: (pass keys, whole passes)
    "vindr": (shuffled(23, seed=3), False),
    "mscxr": (shuffled_with_pass(23, seed=3), True),
    "captions": (mixture(SIZES, WEIGHTS, samples_per_pass=21, seed=3), True),
    "mscxr_iters_per_epoch": (shuffled_with_pass(23, seed=3), False),
}


def _epochs(sampler: StreamSampler, n: int) -> list[list]:
    return [list(sampler) for _ in range(n)]


def _sampler(name, batch_size, **kw):
    keys, whole = STREAMS[name]
    epoch_batches = 4 if name == "mscxr_iters_per_epoch" else None
    return StreamSampler(keys, batch_size, epoch_batches, whole, **kw)


@pytest.mark.parametrize("name", STREAMS)
def test_shards_are_disjoint_slices_whose_union_is_the_world1_stream(name):
    world, batch = 3, 2
    single = _epochs(_sampler(name, batch * world), 3)
    ranks = [_epochs(_sampler(name, batch, rank=r, world_size=world), 3) for r in range(world)]
    for e, epoch in enumerate(single):
        assert all(len(r[e]) == len(epoch) // world for r in ranks)
        for b in range(len(epoch) // (batch * world)):  # global batch b: rank 0's slice, then rank 1's, ...
            got = [k for r in ranks for k in r[e][b * batch : (b + 1) * batch]]
            assert got == epoch[b * batch * world : (b + 1) * batch * world]
    # within one pass no item comes twice, on any rank: MS-CXR's epochs, VinDr's first
    for e in {"vindr": [0], "mscxr": [0, 1, 2]}.get(name, []):
        seen = [k for r in ranks for k in r[e]]
        assert len(set(seen)) == len(seen) == len(single[e])


@pytest.mark.parametrize("name", STREAMS)
def test_resume_at_any_batch_equals_the_uninterrupted_stream(name):
    batch, world = 2, 2
    for rank in range(world):
        whole = _epochs(_sampler(name, batch, rank=rank, world_size=world), 3)
        per_epoch = len(whole[0]) // batch
        for start in range(3 * per_epoch):
            e, b = divmod(start, per_epoch)
            resumed = _sampler(name, batch, rank=rank, world_size=world, start=start)
            assert list(resumed) == whole[e][b * batch :], (start, rank)
            assert resumed.epoch_begin == e * per_epoch
            if e < 2:
                assert list(resumed) == whole[e + 1]  # then whole epochs


# ------------------------------------------------------------------ the orders it replaced
def test_world1_equals_the_old_vindr_stream():
    """Old: the concatenation of ``default_rng([seed, k]).permutation(n)``, epochs of
    ``epoch_batches`` (default ``n // batch``) batches continuing it."""
    n, batch, seed = 23, 4, 3
    stream = np.concatenate([np.random.default_rng([seed, k]).permutation(n) for k in range(4)]).tolist()
    for epoch_batches in (None, 7):
        per = (epoch_batches or n // batch) * batch
        got = _epochs(StreamSampler(shuffled(n, seed), batch, epoch_batches), 3)
        assert got == [stream[e * per : (e + 1) * per] for e in range(3)]


def test_world1_equals_the_old_mscxr_epoch_sampler():
    """Old: ``EpochSampler`` gave epoch ``e`` as ``[(i, e) for i in default_rng([seed, e]).permutation(n)]``
    and the loader dropped the incomplete last batch."""
    n, batch, seed = 23, 4, 3
    old = [[(int(i), e) for i in np.random.default_rng([seed, e]).permutation(n)][: n // batch * batch]
           for e in range(3)]
    assert _epochs(StreamSampler(shuffled_with_pass(n, seed), batch, whole_passes=True), 3) == old


def _old_mixture(sizes, weights, samples_per_epoch, seed, epoch):
    """``MixtureSampler.__iter__`` as it was."""
    w = np.asarray([wt * n for n, wt in zip(sizes, weights, strict=True)], dtype=np.float64)
    p = w / w.sum()
    rng = np.random.default_rng([seed, epoch, 1])
    picks = rng.choice(len(sizes), samples_per_epoch, p=p)
    orders = [rng.permutation(n) if n else np.zeros(0, int) for n in sizes]
    used = [0] * len(sizes)
    keys = []
    for s in picks:
        keys.append((int(s), int(orders[s][used[s] % sizes[s]]), epoch))
        used[s] += 1
    return keys


def test_world1_equals_the_old_caption_mixture():
    batch, seed, per_epoch = 4, 3, 21
    old = [_old_mixture(SIZES, WEIGHTS, per_epoch, seed, e)[: per_epoch // batch * batch] for e in range(3)]
    sampler = StreamSampler(mixture(SIZES, WEIGHTS, per_epoch, seed), batch, whole_passes=True)
    assert _epochs(sampler, 3) == old


def test_bad_epochs_are_refused():
    with pytest.raises(ValueError, match="do not fill one global batch"):
        StreamSampler(shuffled(5, 0), batch_size=3, world_size=2)
    with pytest.raises(ValueError, match="epoch_batches must be None"):
        StreamSampler(shuffled(5, 0), 1, epoch_batches=2, whole_passes=True)
