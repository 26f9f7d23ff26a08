"""Dense pretraining of random tiny towers (the demo's stand-in for pretrained towers)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import compose_train
from medgrounder.core.labels import LOCAL_INDEX, LOCAL_LABELS
from medgrounder.data.base import BoxedImage, BoxedImages
from medgrounder.models.encoders import FusedTowers, HFCLIPVision, TimmViT
from medgrounder.models.tower_pretraining import (
    box_targets,
    coverage_targets,
    dense_loss,
    finding_loss,
    finding_masks,
    load_or_pretrain,
    pretrain_towers,
)
from medgrounder.utils.preflight import check_inputs

CARDIO = LOCAL_INDEX["Cardiomegaly"]


def test_coverage_targets_by_hand():
    # 200 x 100 image, 2 x 2 grid: cells are 100 x 50 pixels.
    t = coverage_targets([("Cardiomegaly", (0, 0, 100, 50)), ("Cardiomegaly", (150, 25, 200, 50))], 200, 100, 2)
    assert t.shape == (4, 22)
    np.testing.assert_allclose(t[:, CARDIO], [1.0, 0.25, 0.0, 0.0])
    assert t.sum() == pytest.approx(1.25)
    # Overlapping boxes of one class: the larger coverage per cell, not the sum.
    t = coverage_targets([("Cardiomegaly", (0, 0, 100, 50)), ("Cardiomegaly", (0, 0, 50, 50))], 200, 100, 2)
    assert t[0, CARDIO] == 1.0


def test_box_targets_by_hand():
    # 200 x 100 image, 4 x 4 grid: patch centres at 12.5 %, 37.5 %, 62.5 %, 87.5 % of each side.
    t = box_targets([("Edema", (0, 0, 100, 50)), ("Cardiomegaly", (100, 50, 200, 100))], 200, 100, 4)
    assert t.shape == (16, 4)
    grid = t.reshape(4, 4, 4)
    np.testing.assert_allclose(grid[:2, :2], np.broadcast_to([0.0, 0.0, 0.5, 0.5], (2, 2, 4)))
    np.testing.assert_allclose(grid[2:, 2:], np.broadcast_to([0.5, 0.5, 1.0, 1.0], (2, 2, 4)))
    assert not grid[2:, :2].any() and not grid[:2, 2:].any()
    t = box_targets([("Edema", (0, 0, 100, 50)), ("Edema", (0, 0, 50, 50))], 200, 100, 4).reshape(4, 4, 4)
    np.testing.assert_allclose(t[0, 0], [0.0, 0.0, 0.25, 0.5])  # the smaller box wins
    np.testing.assert_allclose(t[0, 1], [0.0, 0.0, 0.5, 0.5])  # outside the small one: the large one


def test_dense_loss_by_hand():
    logits = torch.zeros(1, 2, 3)  # 2 classes + background, uniform predictions
    coverage = torch.tensor([[[0.5, 0.0], [0.0, 0.0]]])
    # Soft targets (0.5, 0, 0.5) and (0, 0, 1): cross-entropy log 3 for both patches.
    assert dense_loss(logits, coverage).item() == pytest.approx(np.log(3))
    boxes = torch.tensor([[[0.1, 0.2, 0.3, 0.4], [0.0, 0.0, 0.0, 0.0]]])  # only patch 0 lies in a box
    # sigmoid(0) = 0.5 against (0.1, 0.2, 0.3, 0.4): L1 0.4 + 0.3 + 0.2 + 0.1 = 1, on that patch only.
    total = dense_loss(logits, coverage, torch.zeros(1, 2, 4), boxes, box_weight=2.0).item()
    assert total == pytest.approx(np.log(3) + 2.0)


def test_finding_masks_by_hand():
    # 200 x 100 image, 4 x 4 grid; the second box is smaller than a patch: the one holding its centre.
    labels, masks = finding_masks([("Edema", (0, 0, 100, 50)), ("Cardiomegaly", (190, 90, 195, 95))], 200, 100, 4)
    assert labels.tolist() == [LOCAL_INDEX["Edema"], CARDIO]
    assert np.flatnonzero(masks[0]).tolist() == [0, 1, 4, 5] and np.flatnonzero(masks[1]).tolist() == [15]
    labels, masks = finding_masks([], 200, 100, 4)  # an image without findings
    assert labels.shape == (0,) and masks.shape == (0, 16)


def test_finding_loss_classifies_the_mean_of_a_findings_tokens():
    head = torch.nn.Linear(2, 2, bias=False)
    head.weight.data = torch.eye(2)
    feats = torch.tensor([[[1.0, 0.0], [3.0, 0.0], [0.0, 9.0]]])  # [B=1, P=3, C=2]
    masks = torch.tensor([[[True, True, False], [False, False, False]]])  # one finding, one padding row
    loss = finding_loss(feats, masks, torch.tensor([[0, -1]]), head)
    assert loss.item() == pytest.approx(np.log1p(np.exp(-2.0)))  # logits (2, 0) for class 0
    assert finding_loss(feats, masks, torch.tensor([[-1, -1]]), head).item() == 0.0


def test_box_regression_is_a_separate_term():
    images, records = _bright_square_data(n=16)
    runs = {}
    for weight in (0.0, 1.0):
        runs[weight] = pretrain_towers(_tiny_encoder(), images, records, steps=3, lr=1e-3, warmup_steps=1,
                                       batch_size=8, box_weight=weight)
    assert runs[1.0][0] > runs[0.0][0]  # same towers and batch, plus the box regression error


def _tiny_encoder():
    torch.manual_seed(0)
    return FusedTowers({
        "vit": TimmViT(model_kwargs={"embed_dim": 32, "depth": 1, "num_heads": 2, "patch_size": 16}, image_size=64),
        "clip": HFCLIPVision(config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                                     "num_attention_heads": 2, "patch_size": 32}, image_size=64),
    })


def _bright_square_data(n=48, size=64, seed=0):
    """Black images with a white square labelled Cardiomegaly in half of them."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), dtype=np.uint8)
    records = []
    for i in range(n):
        findings = []
        if i % 2:
            x, y = rng.integers(0, size - 24, 2)
            images[i, y : y + 24, x : x + 24] = 255
            findings = [("Cardiomegaly", (float(x), float(y), float(x + 24), float(y + 24)))]
        records.append(SimpleNamespace(findings=findings, width=size, height=size))
    return torch.from_numpy(images), records


def test_pretraining_learns_where_findings_are_and_restores_flags():
    enc = _tiny_encoder()
    enc.requires_grad_(False)
    images, records = _bright_square_data()
    losses = pretrain_towers(enc, images, records, steps=60, lr=3e-3, warmup_steps=5, batch_size=16)
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5]), losses


def test_cache_is_reused_and_keeps_requires_grad(tmp_path):
    images, records = _bright_square_data()
    boxed = BoxedImages(images, [BoxedImage(r.width, r.height, tuple(r.findings)) for r in records], LOCAL_LABELS)
    dm = SimpleNamespace(boxed_training_images=lambda: boxed)
    settings = {"steps": 5, "lr": 1e-3, "warmup_steps": 1, "batch_size": 8}
    first = _tiny_encoder()
    first.requires_grad_(False)
    path = load_or_pretrain(first, lambda: dm, settings, tmp_path, "k", seed=0)
    assert path.is_file() and not any(p.requires_grad for p in first.parameters())
    second = _tiny_encoder()  # same random init; the cache, not training, must give it the weights
    before = {k: v.clone() for k, v in second.state_dict().items()}
    dm.boxed_training_images = None  # a second pretraining would fail: the cache must be used
    load_or_pretrain(second, lambda: dm, settings, tmp_path, "k", seed=0)
    assert all(p.requires_grad for p in second.parameters())
    after = second.state_dict()
    assert all(torch.equal(after[k], v) for k, v in first.state_dict().items())
    assert any(not torch.equal(after[k], before[k]) for k in before)


def test_pretraining_refused_for_towers_with_weights(tmp_path):
    cfg = compose_train(["+experiment=litegpt_dual", "tower_pretraining={steps:10}",
                         f"paths.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"model\.encoder\.towers\[0\]\.model_name.*tower_pretraining=null"):
        check_inputs(cfg)
